import json
import tempfile
import unittest
from pathlib import Path

import joblib

from trainer.train import save, train


class TrainTest(unittest.TestCase):
    def test_model_beats_baseline(self) -> None:
        _, metrics = train()
        self.assertGreater(metrics["accuracy"], 0.9)

    def test_save_writes_a_loadable_model_and_metrics(self) -> None:
        model, metrics = train()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model"
            save(model, metrics, out)
            self.assertEqual(json.loads((out / "metrics.json").read_text()), metrics)
            self.assertEqual(list(joblib.load(out / "model.joblib").classes_), [0, 1])

