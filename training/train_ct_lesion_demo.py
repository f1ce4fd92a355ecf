#!/usr/bin/env python3
"""Train the demo model `ct-lesion-demo`: a tiny CNN that flags a synthetic lesion in CT slices.

    .venv/bin/pip install -r requirements-train.txt        # torch (CPU is fine) on top of requirements.txt
    .venv/bin/python training/train_ct_lesion_demo.py      # writes fixtures/models/ct-lesion-demo/

What it does, reproducibly (fixed seeds, deterministic torch on one CPU thread):

1. generates synthetic CT slices with `training/phantoms.py`: body-shaped soft-tissue phantoms in
   Hounsfield units with organs, spine, vessels, gas and Gaussian noise, half of them with a
   synthetic lesion (a 6-15 mm sphere, 40-90 HU brighter or darker than its surroundings), at a
   random field of view (256 x 256 pixels of 1.3-1.6 mm);
2. prepares them with the pipeline's own preprocessing (`ai_pipeline.preprocessing.prepare_values`:
   resize to 128 x 128, soft-tissue window 40/400), exactly as the server does at inference;
3. trains a small fully convolutional CNN (about 16k parameters) in two stages: on 32 x 32 patches
   (one around each lesion, three from lesion-free slices), then on whole slices (the highest
   lesion logit anywhere in the slice decides), with random flips and Adam; the weights with the
   best accuracy on a validation set are kept;
4. exports ONNX (opset 17, dynamic batch), checks onnxruntime gives the same outputs as torch;
5. prints accuracy, sensitivity and specificity on a held-out synthetic set (other seeds) per
   slice, and per synthetic study (24-slice volumes, the manifest's aggregation rule);
6. writes `model.onnx` and `manifest.json` (with the file's SHA-256 and these numbers).

The model is honestly labelled: trained on synthetic phantoms only, NOT for clinical use.
It takes a few minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from ai_pipeline.manifest import MANIFEST_FILE, MODEL_FILE, parse_manifest  # noqa: E402
from ai_pipeline.preprocessing import prepare_values  # noqa: E402
from training.phantoms import add_lesion, random_patient, render_slice, render_volume  # noqa: E402

SEED = 20240611
TRAIN_SEED, VALIDATION_SEED, TEST_SEED, STUDY_SEED = SEED, SEED + 1, SEED + 2, SEED + 3
NAME, VERSION = "ct-lesion-demo", "1.0.0"
OPSET = 17
CONTRAST = (40.0, 90.0)

# The manifest without sha256/evaluation, which training fills in. The preprocessing below reads
# its input spec, so training and inference cannot drift apart.
MANIFEST = {
    "schema_version": 1,
    "name": NAME,
    "version": VERSION,
    "sha256": "0" * 64,
    "title": "Synthetic CT lesion detector (demo)",
    "description": (
        "Flags a synthetic focal lesion (a small round hyper- or hypodense blob) in axial CT slices of "
        "synthetic soft-tissue phantoms. Made to exercise the BTT Health AI pipeline end to end."
    ),
    "intended_use": (
        "Demonstration and testing of the BTT Health AI pipeline only. Trained on synthetic phantoms; "
        "NOT for clinical use: it has never seen a patient image, is not a medical device and its "
        "output means nothing about real patients."
    ),
    "clinical_use": False,
    "specialty": "radiology",
    "applicability": {
        "modalities": ["CT"],
        "body_parts": [],
        "sop_classes": ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"],
    },
    "input": {
        "name": "image",
        "kind": "slice",
        "size": [128, 128],
        "channels": 1,
        "windowing": {"center": 40, "width": 400},
        "max_batch": 64,
        "min_slices": 1,
        "tta": ["identity", "flip_lr", "flip_ud"],
        "series_selection": "largest",
    },
    "output": {
        "name": "logits",
        "type": "classification",
        "activation": "softmax",
        "units": "probability",
        "min_consecutive_slices": 2,
        "labels": [
            {"index": 0, "name": "no-lesion", "display": "No synthetic lesion", "background": True},
            {
                "index": 1,
                "name": "synthetic-lesion",
                "display": "Synthetic focal lesion (phantom)",
                "code": {
                    "system": "urn:btt-health:ai-finding",
                    "code": "synthetic-lesion",
                    "display": "Synthetic focal lesion (phantom; demo model)",
                },
                "threshold": 0.5,
            },
        ],
    },
    "quality": {"min_bits_stored": 12, "pixel_spacing_mm": [0.4, 2.0]},
    "report": {
        "code": {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"},
    },
    "licence": "CC0-1.0 (synthetic demo model; no patient data involved)",
    "training_data": "(filled in by training)",
    "authors": ["BTT Health (training/train_ct_lesion_demo.py)"],
}


class TinyLesionNet(nn.Module):
    """A small fully convolutional lesion detector.

    `heatmap(x)` gives a lesion logit per 4 x 4 pixel cell (receptive field 26 pixels, about 75 mm);
    the image's logits are (0, the highest cell logit), so softmax gives P(lesion) = sigmoid(peak).
    Being fully convolutional, it is trained first on 32 x 32 patches (dense, balanced signal) and
    then fine-tuned on whole slices, where the peak must also stay low on lesion-free anatomy.
    """

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 8), nn.MaxPool2d(2), *block(8, 16), nn.MaxPool2d(2), *block(16, 32), *block(32, 32)
        )
        self.score = nn.Conv2d(32, 1, 1)

    def heatmap(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = self.heatmap(x).amax(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(peak), peak], dim=1)


def make_slices(count: int, seed: int, spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` prepared slices (float16, (N, 1, 128, 128)), labels (half with a lesion) and the
    lesion centre (row, column) in the prepared slice (-1 without a lesion)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, spec.channels, spec.height, spec.width), dtype=np.float16)
    labels = np.zeros(count, dtype=np.int64)
    centres = np.full((count, 2), -1.0)
    scale = 256 / spec.width  # rendered pixels per model pixel
    for index in range(count):
        patient = random_patient(rng)
        z_mm = float(rng.uniform(-60, 60))
        if index % 2:
            patient = add_lesion(patient, rng, z_mm=z_mm, contrast_hu=CONTRAST)
            # Cut the sphere where at least 80% of its radius shows.
            z_mm += float(rng.uniform(-0.6, 0.6)) * patient.lesion.radius
            labels[index] = 1
        spacing = float(rng.uniform(1.3, 1.6))
        hu = render_slice(patient, z_mm=z_mm, size=256, spacing_mm=spacing, rng=rng)
        images[index] = prepare_values(hu, spec)
        if labels[index]:
            pixel = spacing * scale
            centres[index] = (
                patient.lesion.y / pixel + (spec.height - 1) / 2,
                patient.lesion.x / pixel + (spec.width - 1) / 2,
            )
    return images, labels, centres


def make_studies(count: int, seed: int, spec, slices: int = 24) -> list[tuple[np.ndarray, int]]:
    """Synthetic studies (prepared (slices, 1, 128, 128)), every other one with a 9-15 mm lesion."""
    rng = np.random.default_rng(seed)
    studies = []
    for index in range(count):
        patient = random_patient(rng)
        label = index % 2
        if label:
            patient = add_lesion(patient, rng, z_mm=float(rng.uniform(-20, 20)), radius_mm=(9.0, 15.0))
        volume, _, _ = render_volume(
            patient,
            slices=slices,
            slice_spacing_mm=3.0,
            size=256,
            spacing_mm=float(rng.uniform(1.3, 1.6)),
            rng=rng,
        )
        studies.append((np.stack([prepare_values(hu, spec) for hu in volume]), label))
    return studies


def predict(model: nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """P(lesion) for each image."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = model(torch.from_numpy(images[start : start + batch].astype(np.float32)))
            out.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros(0)


def metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    predicted = probabilities >= threshold
    positives, negatives = labels == 1, labels == 0
    tp = int(np.sum(predicted & positives))
    tn = int(np.sum(~predicted & negatives))
    fp = int(np.sum(predicted & negatives))
    fn = int(np.sum(~predicted & positives))
    return {
        "n": len(labels),
        "accuracy": round((tp + tn) / len(labels), 4),
        "sensitivity": round(tp / max(1, tp + fn), 4),
        "specificity": round(tn / max(1, tn + fp), 4),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


def study_positive(probabilities: np.ndarray, threshold: float, run: int) -> bool:
    """The pipeline's aggregation: positive when `run` adjacent slices reach the threshold."""
    needed = min(run, len(probabilities))
    streak = 0
    for value in probabilities:
        streak = streak + 1 if value >= threshold else 0
        if streak >= needed:
            return True
    return False


PATCH = 32


def _patches(images, labels, centres, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of 32 x 32 patches: one around each lesion (jittered), three from lesion-free slices per lesion."""
    size = images.shape[-1]
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    crops, targets = [], []
    for index in positives:
        row, col = centres[index] + rng.uniform(-6, 6, size=2)
        top = int(np.clip(round(row) - PATCH // 2, 0, size - PATCH))
        left = int(np.clip(round(col) - PATCH // 2, 0, size - PATCH))
        crops.append(images[index, :, top : top + PATCH, left : left + PATCH])
        targets.append(1.0)
    for index in rng.choice(negatives, 3 * len(positives)):
        top, left = rng.integers(0, size - PATCH, size=2)
        crops.append(images[index, :, top : top + PATCH, left : left + PATCH])
        targets.append(0.0)
    return np.stack(crops).astype(np.float32), np.asarray(targets, dtype=np.float32)


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flips = torch.rand(2, generator=generator)
    if flips[0] < 0.5:
        x = torch.flip(x, dims=(3,))
    if flips[1] < 0.5:
        x = torch.flip(x, dims=(2,))
    return x


def train(
    model: TinyLesionNet,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    patch_epochs: int,
    slice_epochs: int,
    seed: int,
    threshold: float,
) -> dict:
    """Stage 1 on patches, stage 2 on whole slices; keeps the weights with the best validation accuracy."""
    images, labels, centres = data
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    best: dict = {"accuracy": -1.0}

    def checkpoint(stage: str) -> None:
        result = metrics(predict(model, validation[0]), validation[1], threshold)
        print(f"    validation: accuracy {result['accuracy']:.4f}, sensitivity {result['sensitivity']:.4f}, "
              f"specificity {result['specificity']:.4f}", flush=True)  # fmt: skip
        if result["accuracy"] > best["accuracy"]:
            best.update(result, stage=stage, state={k: v.clone() for k, v in model.state_dict().items()})

    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(patch_epochs):
        model.train()
        started = time.perf_counter()
        x_all, y_all = _patches(images, labels, centres, rng)
        order = rng.permutation(len(x_all))
        total = 0.0
        for start in range(0, len(order), 128):
            chosen = order[start : start + 128]
            x = _flip(torch.from_numpy(x_all[chosen]), generator)
            loss = nn.functional.binary_cross_entropy_with_logits(
                model.heatmap(x).amax(dim=(1, 2, 3)), torch.from_numpy(y_all[chosen])
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(chosen)
        print(f"  patches, epoch {epoch + 1}/{patch_epochs}: loss {total / len(order):.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    checkpoint(f"patches ({patch_epochs} epochs)")

    optimiser = torch.optim.Adam(model.parameters(), lr=2e-4)
    for epoch in range(slice_epochs):
        model.train()
        started = time.perf_counter()
        order = rng.permutation(len(images))
        total = 0.0
        for start in range(0, len(order), 32):
            chosen = order[start : start + 32]
            x = _flip(torch.from_numpy(images[chosen].astype(np.float32)), generator)
            loss = nn.functional.cross_entropy(model(x), torch.from_numpy(labels[chosen]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(chosen)
        print(f"  whole slices, epoch {epoch + 1}/{slice_epochs}: loss {total / len(order):.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        checkpoint(f"whole slices (epoch {epoch + 1})")
    model.load_state_dict(best.pop("state"))
    print(f"  kept the weights after {best['stage']} (best validation accuracy)", flush=True)
    return best


def export_onnx(model: nn.Module, path: Path, spec) -> None:
    model.eval()
    example = torch.zeros(1, spec.channels, spec.height, spec.width)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the torch.export one, which needs
        # onnxscript; this small static graph exports the same either way.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[spec.name],
            output_names=["logits"],
            dynamic_axes={spec.name: {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    # Name the model and drop the exporter's version strings so the file depends only on the weights.
    proto.producer_name, proto.producer_version = "btt-health-training", "1"
    proto.doc_string = f"{NAME} {VERSION}: synthetic demo model, NOT for clinical use"
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "fixtures" / "models" / NAME)
    parser.add_argument("--train", type=int, default=8000, help="training slices")
    parser.add_argument("--test", type=int, default=2000, help="held-out test slices")
    parser.add_argument("--studies", type=int, default=100, help="held-out synthetic studies")
    parser.add_argument("--patch-epochs", type=int, default=12)
    parser.add_argument("--slice-epochs", type=int, default=4)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    template = parse_manifest(MANIFEST)
    spec = template.input
    threshold = template.output.findings[0].threshold
    run = template.output.min_consecutive_slices
    began = time.perf_counter()

    print(
        f"generating {args.train} training, 600 validation and {args.test} test slices (seeds {TRAIN_SEED}..)",
        flush=True,
    )
    train_data = make_slices(args.train, TRAIN_SEED, spec)
    x_val, y_val, _ = make_slices(600, VALIDATION_SEED, spec)
    x_test, y_test, _ = make_slices(args.test, TEST_SEED, spec)
    print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)

    model = TinyLesionNet()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"training TinyLesionNet ({parameters} parameters) on 1 CPU thread", flush=True)
    validation = train(
        model,
        train_data,
        (x_val, y_val),
        patch_epochs=args.patch_epochs,
        slice_epochs=args.slice_epochs,
        seed=SEED,
        threshold=threshold,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / MODEL_FILE
    export_onnx(model, onnx_path, spec)

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [
            session.run(None, {spec.name: x_test[s : s + 256].astype(np.float32)})[0]
            for s in range(0, len(x_test), 256)
        ]
    )
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    onnx_probabilities = (exp / exp.sum(axis=1, keepdims=True))[:, 1]
    torch_probabilities = predict(model, x_test)
    difference = float(np.max(np.abs(onnx_probabilities - torch_probabilities)))
    print(f"onnxruntime vs torch on the test set: max |difference| of P(lesion) = {difference:.2e}")
    if difference > 1e-4:
        raise SystemExit("the exported model does not reproduce the torch model")

    slice_metrics = metrics(onnx_probabilities, y_test, threshold)
    print(
        f"generating {args.studies} held-out synthetic studies of 24 slices (seed {STUDY_SEED})", flush=True
    )
    studies = make_studies(args.studies, STUDY_SEED, spec)
    study_probabilities, study_labels = [], []
    for volume, label in studies:
        probabilities = predict(model, volume)
        study_probabilities.append(1.0 if study_positive(probabilities, threshold, run) else 0.0)
        study_labels.append(label)
    study_metrics = metrics(np.asarray(study_probabilities), np.asarray(study_labels), 0.5)

    sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest = dict(MANIFEST)
    manifest["sha256"] = sha256
    manifest["training_data"] = (
        f"Synthetic only, no patient data: {args.train} CT-like slices (256 x 256, 1.3-1.6 mm pixels, HU) of random "
        f"soft-tissue phantoms from training/phantoms.py (seed {TRAIN_SEED}), half with a synthetic spherical lesion "
        "of 6-15 mm radius and +-40-90 HU contrast; trained on 32 x 32 patches, then whole slices, with random flips. "
        "Made by training/train_ct_lesion_demo.py."
    )
    manifest["evaluation"] = {
        "dataset": (
            f"held-out synthetic phantoms (other seeds): {args.test} slices (seed {TEST_SEED}) and "
            f"{args.studies} studies of 24 slices at 3 mm, lesions 9-15 mm (seed {STUDY_SEED})"
        ),
        "threshold": threshold,
        "validation": {k: v for k, v in validation.items() if k != "stage"},
        "per_slice": slice_metrics,
        "per_study": study_metrics,
        "note": "synthetic data only; says nothing about performance on real images",
    }
    parse_manifest(manifest)  # the manifest the registry will read must validate
    (args.out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    size_kib = onnx_path.stat().st_size / 1024
    print()
    print(f"model: {onnx_path} ({size_kib:.0f} KiB), sha256 {sha256}")
    print(f"held-out synthetic test set, per slice (n={slice_metrics['n']}, threshold {threshold}):")
    print(f"  accuracy    {slice_metrics['accuracy']:.4f}")
    print(f"  sensitivity {slice_metrics['sensitivity']:.4f}")
    print(f"  specificity {slice_metrics['specificity']:.4f}")
    print(f"held-out synthetic studies (n={study_metrics['n']}, {run} adjacent slices >= {threshold}):")
    print(f"  accuracy    {study_metrics['accuracy']:.4f}")
    print(f"  sensitivity {study_metrics['sensitivity']:.4f}")
    print(f"  specificity {study_metrics['specificity']:.4f}")
    print(f"total time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
