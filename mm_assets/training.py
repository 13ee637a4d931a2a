"""Stage 4: fusion-model training over the frozen encoders' features.

A refresh does not retrain for every new drop: the live model is kept (new products are embedded
with it and join the index incrementally) until enough of the catalog is new or changed; then the
retrain sensor, the nightly schedule or `mmsearch run` request a run tagged for retraining.
A first model, or encoders the live model was not trained with, always train.
"""

from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    asset,
)

from mm_assets.features import GPU_STEP_TAGS, encoder_features
from mm_assets.metadata import latest_metadata, table
from mmsearch.features.distributed import encoding_on
from mmsearch.model.training import changes_since_model, encode_shopper_views, train_and_save
from resources import (
    VERSIONS_IO_MANAGER,
    ImageEncoderResource,
    PipelineSettings,
    ReleaseRegistryResource,
    TextEncoderResource,
    WarehouseResource,
)

RETRAIN_TAG = "mmsearch/retrain"


def _reusable_model(registry, release, encoders: dict) -> tuple[str | None, dict]:
    """(the live model, its config) when it was trained with these encoders, else (None, {})."""
    if release is None:
        return None, {}
    try:
        config = registry.model_config(release.model_version)
    except FileNotFoundError:
        return None, {}
    trained_with = config.get("encoders", {})
    same = all(trained_with.get(k) == encoders[k] for k in ("text_encoder_id", "image_encoder_id"))
    return (release.model_version, config) if same else (None, {})


def _encoders(text_encoder: TextEncoderResource, image_encoder: ImageEncoderResource) -> dict:
    """Which encoders make the features: their ids and the settings to reload them."""
    text_model, image_model = text_encoder.load(), image_encoder.load()
    return {
        "text_encoder_id": text_model.encoder_id,
        "image_encoder_id": image_model.encoder_id,
        **text_encoder.settings(),
        **image_encoder.settings(),
    }


def _model_plan(context: AssetExecutionContext, releases, encoders: dict):
    """What this run does with the model: (the live model it keeps or None when it trains, that
    model's config, why, the live release)."""
    live = releases.live()
    if context.run.tags.get(RETRAIN_TAG) == "true":
        return None, {}, "retrain requested", live
    reusable, config = _reusable_model(releases, live, encoders)
    if reusable is None:
        return None, {}, "no live model for these encoders", live
    return reusable, config, "kept the live model: not enough of the catalog changed", live


@asset(
    deps=[encoder_features],
    group_name="training",
    pool="warehouse",
    kinds={"pytorch", "duckdb"},
    op_tags=GPU_STEP_TAGS,
    description="Shopper-style re-shoots of the train products' images (another crop, tilt, "
    "mirror, background and lighting), encoded by the CNN: fusion_model learns from them that a "
    "shopper's photo is the product. Stored by content hash like every feature, and encoded only "
    "when this run trains a model, so adding products to the live index does not pay for them; "
    "on the Ray cluster's workers with MM_RAY_ADDRESS, as encoder_features.",
)
def shopper_views(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    registry: ReleaseRegistryResource,
    text_encoder: TextEncoderResource,
    image_encoder: ImageEncoderResource,
    settings: PipelineSettings,
) -> MaterializeResult:
    kept, _, reason, _ = _model_plan(
        context, registry.registry, _encoders(text_encoder, image_encoder)
    )
    encoded, engine = 0, {}
    if kept is None:
        with encoding_on(settings.ray_cluster()) as encoding, warehouse.connect() as con:
            views = encoding.view_encoder(image_encoder.load(), image_encoder.load_kwargs())
            encoded = encode_shopper_views(
                con, views, settings.training_config(), image_encoder.batch_size
            )
            # Where the views were encoded: "in_process" or "ray", and on how many workers.
            engine = encoding.report()
    return MaterializeResult(
        metadata={"views_encoded": encoded, "trains": kept is None, "reason": reason, **engine}
    )


def _figures(config: dict) -> dict:
    """A model's training figures as numeric metadata, plotted across materializations."""
    summary, history = config.get("summary", {}), config.get("history", [])
    figures = {
        "best_epoch": MetadataValue.float(float(summary.get("best_epoch") or 0.0)),
        "epochs_run": MetadataValue.float(float(summary.get("epochs_run", len(history)))),
        "best_validation_loss": MetadataValue.float(
            float(summary.get("best_validation_loss") or 0.0)
        ),
        "temperature": MetadataValue.float(float(summary.get("temperature") or 0.0)),
    }
    if "steps_run" in summary:
        figures["steps_run"] = summary["steps_run"]
        figures["step_budget"] = summary["step_budget"]
    if history:
        figures["final_train_loss"] = MetadataValue.float(float(history[-1]["train_loss"]))
        # The latest training's curve, one row per validation (models trained before the step
        # budget have no step column).
        columns = {
            "step": "int",
            "epoch": "float",
            "train_loss": "float",
            "validation_loss": "float",
            "temperature": "float",
        }
        figures["training_curve"] = table(
            history, {name: kind for name, kind in columns.items() if name in history[0]}
        )
    return figures


@asset(
    deps=[shopper_views, "training_pairs", "training_queries"],
    group_name="training",
    pool="warehouse",
    kinds={"pytorch"},
    io_manager_key=VERSIONS_IO_MANAGER,
    description="Projection heads and a gated fusion into one 256-d space, trained with "
    "symmetric InfoNCE (image<->text) plus query->product terms; saved as a versioned artifact. "
    "Between retrains the live model is kept and the share of the catalog changed since is shown. "
    "Hands `{model_version}` (the model the candidate release is built with) to "
    "candidate_release.",
)
def fusion_model(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    registry: ReleaseRegistryResource,
    text_encoder: TextEncoderResource,
    image_encoder: ImageEncoderResource,
    settings: PipelineSettings,
) -> MaterializeResult[dict]:
    encoders = _encoders(text_encoder, image_encoder)
    releases = registry.registry
    reusable, config, reason, live = _model_plan(context, releases, encoders)
    metadata = {}
    with warehouse.connect() as con:
        if reusable is None:
            version, _ = train_and_save(con, warehouse.layout, encoders, settings.training_config())
            releases.push_model(version)
            config = releases.model_config(version)
            metadata["training_queries"] = config["summary"]["training_queries"]
        else:
            version = reusable
        products = con.execute("SELECT count(*) FROM training_pairs").fetchone()[0]
        changed = changes_since_model(con, version)
    due = settings.retrain_due(changed, products)
    # The model the candidate release is built with: stored as the registry's candidate by the
    # versions IO manager.
    return MaterializeResult(
        value={"model_version": version},
        metadata={
            "model_version": version,
            "trained": version != reusable,
            "reason": reason,
            "live_model_version": live.model_version if live else "none",
            "products": products,
            "changed_since_model": changed,
            "retrain_due": due,
            **_figures(config),
            **metadata,
        },
    )


def latest_model_state(instance: DagsterInstance) -> dict | None:
    """The newest fusion_model materialization's metadata as plain values, or None."""
    return latest_metadata(instance, "fusion_model")


def pending_retrain(instance: DagsterInstance) -> tuple[str, str] | None:
    """(run key, reason) when the catalog moved past the retrain threshold since the live model."""
    state = latest_model_state(instance)
    if not state or not state.get("retrain_due"):
        return None
    reason = (
        f"{state['changed_since_model']} of {state['products']} products are new or changed "
        f"since {state['model_version']}"
    )
    return f"retrain:{state['model_version']}:{state['changed_since_model']}", reason
