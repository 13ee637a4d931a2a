"""Stage 3: image and text features from the frozen pretrained encoders (GPU when present), in
this process or, with `MM_RAY_ADDRESS`, on a Ray cluster's workers."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    asset,
    asset_check,
)

from mmsearch.features.distributed import encoding_on
from mmsearch.features.extraction import extract_features, feature_coverage
from mmsearch.queries.pseudo import PSEUDO_QUERY_RULES
from resources import (
    ImageEncoderResource,
    PipelineSettings,
    TextEncoderResource,
    WarehouseResource,
)

# On Kubernetes with the per-step executor (docs/production.md), an encoding step's pod asks for a
# GPU node; elsewhere the tag is ignored and the encoders use CUDA when the machine has it.
GPU_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    }
}


@asset(
    deps=["training_pairs", "stg_labeled_queries"],
    # New pseudo-query rules make new texts to encode.
    code_version=PSEUDO_QUERY_RULES,
    group_name="features",
    pool="warehouse",
    kinds={"pytorch", "duckdb"},
    op_tags=GPU_STEP_TAGS,
    description="Image (CNN) and text (MiniLM) embeddings of products (every image of a "
    "gallery) and labeled queries, "
    "stored by content hash and encoder id; only content not yet encoded is encoded; also each "
    "product's pseudo-queries (training, ranker fitting and label-free evaluation read them). "
    "(Shopper-view embeddings, a training input, are encoded by shopper_views when a model "
    "trains.)",
)
def encoder_features(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    text_encoder: TextEncoderResource,
    image_encoder: ImageEncoderResource,
    settings: PipelineSettings,
) -> MaterializeResult:
    text_model, image_model = text_encoder.load(), image_encoder.load()
    with encoding_on(settings.ray_cluster()) as encoding, warehouse.connect() as con:
        report = extract_features(
            con,
            encoding.text_encoder(text_model, text_encoder.load_kwargs()),
            encoding.image_encoder(image_model, image_encoder.load_kwargs()),
            image_encoder.batch_size,
        )
        engine = encoding.report()
    return MaterializeResult(
        metadata={
            # Rows of the feature tables: one vector per distinct image and text.
            "dagster/row_count": report.images_total + report.texts_total,
            "pseudo_queries_encoded": report.pseudo_queries_encoded,
            "images_encoded": report.images_encoded,
            "texts_encoded": report.texts_encoded,
            "images_total": report.images_total,
            "texts_total": report.texts_total,
            "image_encoder": report.image_encoder_id,
            "text_encoder": report.text_encoder_id,
            "device": str(image_model.device),
            # Where the encoding ran: "in_process" or "ray", and on how many workers (GPUs).
            **engine,
        }
    )


@asset_check(
    asset=encoder_features,
    blocking=True,
    description="every live product has text features, and image features when it has a clean "
    "image (unit-norm: the warehouse refuses others)",
)
def features_cover_catalog(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    text_encoder: TextEncoderResource,
    image_encoder: ImageEncoderResource,
) -> AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        coverage = feature_coverage(
            con, image_encoder.load().encoder_id, text_encoder.load().encoder_id
        )
    passed = (
        coverage["with_text_features"] == coverage["products"]
        and coverage["with_image_features"] == coverage["with_clean_image"]
    )
    return AssetCheckResult(passed=passed, metadata=coverage)
