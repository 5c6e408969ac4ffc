"""Train a classifier on scikit-learn's breast cancer dataset; write the model and its metrics."""

import argparse
import json
import os
from pathlib import Path

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def train() -> tuple[Pipeline, dict[str, float]]:
    features, labels = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=0, stratify=labels
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x_train, y_train)
    metrics = {
        "accuracy": round(model.score(x_test, y_test), 4),
        "train_rows": len(x_train),
        "test_rows": len(x_test),
    }
    return model, metrics


def save(model: Pipeline, metrics: dict[str, float], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, output_dir / "model.joblib")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(os.environ.get("OUTPUT_DIR", "output")),
        help="where model.joblib and metrics.json go (default: $OUTPUT_DIR or ./output)",
    )
    args = parser.parse_args()
    model, metrics = train()
    save(model, metrics, args.output_dir)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
