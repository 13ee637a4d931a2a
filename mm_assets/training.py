"""Stage 4: fusion-model training over the frozen encoders' features."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from mm_assets.features import encoder_features
from mmsearch.training import train_and_save
from resources import ImageEncoderResource, PipelineSettings, TextEncoderResource, WarehouseResource


@asset(
    deps=[encoder_features, "training_pairs", "training_queries"],
    group_name="training",
    pool="warehouse",
    kinds={"pytorch"},
    description="Projection heads and a gated fusion into one 256-d space, trained with "
    "symmetric InfoNCE (image<->text) plus query->product terms; saved as a versioned artifact.",
)
def fusion_model(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    text_encoder: TextEncoderResource,
    image_encoder: ImageEncoderResource,
    settings: PipelineSettings,
) -> MaterializeResult:
    text_model, image_model = text_encoder.load(), image_encoder.load()
    encoders = {
        "text_encoder_id": text_model.encoder_id,
        "image_encoder_id": image_model.encoder_id,
        **text_encoder.settings(),
        **image_encoder.settings(),
    }
    with warehouse.connect() as con:
        version, summary = train_and_save(
            con, warehouse.layout, encoders, settings.training_config()
        )
    return MaterializeResult(
        metadata={
            "model_version": version,
            "products": summary["products"],
            "training_queries": summary["training_queries"],
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "best_validation_loss": summary["best_validation_loss"],
            "temperature": MetadataValue.float(summary["temperature"] or 0.0),
        }
    )
