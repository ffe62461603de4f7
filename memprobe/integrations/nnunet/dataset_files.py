"""Check what ``memprobe nnunet plan`` is given before nnU-Net sees any of it.

nnU-Net's planner trusts its inputs: a malformed ``dataset.json`` or fingerprint fails deep
inside it (some errors in its worker processes), and a configuration it does not plan is only
noticed after the whole plan ran. Everything it will read is checked here first, so a bad input
is one line naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_text, shown
from memprobe.integrations.nnunet.fingerprint import EXTRACT_HINT, read_fingerprint

CONFIGURATIONS = ("3d_fullres", "3d_lowres", "2d")
_DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9][A-Za-z0-9_.-]*$")


def dataset_argument(dataset: str) -> str | int:
    """``-d``: a dataset id (``4``) or name (``Dataset004_Hippocampus``); never a path."""
    text = dataset.strip()
    if text.isdigit() and int(text) < 1000:
        return int(text)
    if _DATASET_NAME.match(text):
        return text
    raise InvalidInputError(
        f"-d {shown(dataset)!r} is neither a dataset id (e.g. 4) nor a dataset name (e.g. Dataset004_Hippocampus)"
    )


def check_configuration(configuration: str) -> None:
    if configuration not in CONFIGURATIONS:
        raise InvalidInputError(
            f"-c {shown(configuration)!r}: memprobe plans one of nnU-Net's {', '.join(CONFIGURATIONS)}"
        )


def check_dataset(dataset: str | int) -> str:
    """The dataset's name, once its dataset.json and fingerprint are known to be what nnU-Net reads.

    Raises:
        InvalidInputError: the dataset is unknown, or one of its files is malformed.
    """
    import nnunetv2.paths as paths
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not paths.nnUNet_raw or not paths.nnUNet_preprocessed:
        raise InvalidInputError(
            "set nnUNet_raw and nnUNet_preprocessed (nnU-Net's folders) to plan a dataset"
        )
    try:
        name = str(maybe_convert_to_dataset_name(dataset))
    except RuntimeError as error:
        raise InvalidInputError(f"no nnU-Net dataset {shown(dataset)}: {shown(error, 200)}") from None
    check_dataset_json(Path(paths.nnUNet_raw) / name / "dataset.json")
    check_fingerprint(Path(paths.nnUNet_preprocessed) / name / "dataset_fingerprint.json")
    return name


def check_dataset_json(path: Path) -> dict[str, Any]:
    """The keys nnU-Net's planner reads from dataset.json, with their types."""
    if not path.exists():
        raise InvalidInputError(f"the dataset has no dataset.json ({shown(path)}): check nnUNet_raw")
    data = _json_object(path, "dataset.json", "nnU-Net's dataset.json format (see its dataset_format.md)")
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InvalidInputError(f"{shown(path)}: 'channel_names' must map channel indices to names")
    labels = data.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0 or len(labels) < 2:
        raise InvalidInputError(f"{shown(path)}: 'labels' must name 'background': 0 and at least one class")
    if not all(_whole(value) or _whole_list(value) for value in labels.values()):
        raise InvalidInputError(
            f"{shown(path)}: every label must be a whole number (or a list of them for regions)"
        )
    if not _whole(data.get("numTraining")) or data["numTraining"] < 1:
        raise InvalidInputError(f"{shown(path)}: 'numTraining' must be a whole number of at least 1")
    if not isinstance(data.get("file_ending"), str) or not data["file_ending"]:
        raise InvalidInputError(f"{shown(path)}: 'file_ending' must be the images' file ending, e.g. .nii.gz")
    return data


def check_fingerprint(path: Path) -> None:
    """The fingerprint holds what the planner reads, every number finite, 3D."""
    if not path.exists():
        raise InvalidInputError(f"the dataset has no fingerprint ({shown(path)}): {EXTRACT_HINT}")
    data = _json_object(path, "dataset_fingerprint.json", EXTRACT_HINT)
    for key in ("spacings", "shapes_after_crop"):
        cases = data.get(key)
        if not isinstance(cases, list) or not cases:
            raise InvalidInputError(f"{shown(path)}: '{key}' must list one entry per case: {EXTRACT_HINT}")
        if any(isinstance(case, list) and len(case) == 2 for case in cases):
            raise InvalidInputError(f"{shown(path)}: 2D data; memprobe plans nnU-Net's 3D configurations")
    properties = data.get("foreground_intensity_properties_per_channel")
    if not isinstance(properties, dict) or not properties:
        raise InvalidInputError(
            f"{shown(path)}: 'foreground_intensity_properties_per_channel' is missing: {EXTRACT_HINT}"
        )
    read_fingerprint(path)  # shapes, spacings: finite, positive, 3 per case


def _json_object(path: Path, what: str, hint: str) -> dict[str, Any]:
    text = read_input_text(path, what)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise InvalidInputError(f"{shown(path)} is not valid JSON ({type(error).__name__}): {hint}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{shown(path)} holds no JSON object: {hint}")
    return data


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_whole(item) for item in value)
