"""The training pipeline: train in the trainer image, then gate on the model's accuracy.

`python pipeline.py` compiles it to dist/training-pipeline_v<VERSION>.yaml.
"""

from pathlib import Path

from kfp import compiler, dsl

HERE = Path(__file__).parent
NAME = "training-pipeline"
VERSION = (HERE / "VERSION").read_text().strip()
# Pushed by configs/trainer-image.
TRAINER_IMAGE = "localhost:5000/ml/trainer:latest"


@dsl.container_component
def train(model: dsl.Output[dsl.Model]):
    return dsl.ContainerSpec(image=TRAINER_IMAGE, args=["--output-dir", model.path])


@dsl.component(base_image="python:3.11")
def check_accuracy(model: dsl.Input[dsl.Model], min_accuracy: float) -> float:
    import json
    import os

    with open(os.path.join(model.path, "metrics.json")) as f:
        accuracy = json.load(f)["accuracy"]
    if accuracy < min_accuracy:
        raise ValueError(f"accuracy {accuracy} is below {min_accuracy}")
    return accuracy


@dsl.pipeline(name=NAME, description="Train the classifier and check its accuracy.")
def training_pipeline(min_accuracy: float = 0.9):
    trained = train()
    check_accuracy(model=trained.outputs["model"], min_accuracy=min_accuracy)


if __name__ == "__main__":
    template = HERE / "dist" / f"{NAME}_v{VERSION}.yaml"
    template.parent.mkdir(exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(template))
    print(f"compiled {template}")
