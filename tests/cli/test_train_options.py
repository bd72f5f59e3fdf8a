"""``jnreg train``'s options come from TrainConfig's fields: every field a flag, every alias a field's."""

from __future__ import annotations

import json
from dataclasses import fields

from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.cli.train import train
from jnreg.cli.train_options import FLAG_ALIASES, flag_name
from jnreg.core.training.config import ALIASES, INTERNAL, TrainConfig
from tests.helpers import TINY, heavy_imports_after


def flags_of_command() -> dict[str, str]:
    """Every spelling the train command accepts, and the parameter it sets."""
    return {opt: param.name for param in train.params for opt in param.opts if opt.startswith("--")}


def test_every_config_field_is_a_flag_and_every_alias_names_a_field():
    accepted = flags_of_command()
    names = {f.name for f in fields(TrainConfig)}
    for field in fields(TrainConfig):
        if field.name in INTERNAL:
            assert flag_name(field) not in accepted
            continue
        assert flag_name(field) in accepted, field.name
        assert field.metadata["help"], field.name
    for field_name, spellings in FLAG_ALIASES.items():
        assert field_name in names
        for spelling in spellings:
            assert accepted[spelling] == accepted[f"--{field_name.replace('_', '-')}"]
    assert set(ALIASES.values()) <= names
    # The spellings the guide and earlier releases use.
    for spelling in ("--model_name_or_path", "--model-name-or-path", "--revision", "--output_dir", "--output-dir"):
        assert spelling in accepted
    for new in ("--lr-scheduler", "--warmup-ratio", "--weight-decay", "--eval-batch-size"):
        assert new in accepted


def test_the_new_flags_reach_the_saved_config(tmp_path, builtin_agents):
    out = tmp_path / "out"
    done = CliRunner().invoke(
        cli,
        ["train", "fact_checker", "--model_name_or_path", TINY, "--output_dir", str(out), "--dry-run",
         "--max-train-samples", "8", "--lr-scheduler", "LINEAR", "--warmup-ratio", "0.1", "--weight-decay", "0.01",
         "--eval-batch-size", "3"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    saved = json.loads((out / "jnreg_config.json").read_text())
    assert (saved["lr_scheduler"], saved["warmup_ratio"], saved["weight_decay"]) == ("linear", 0.1, 0.01)
    assert saved["eval_batch_size"] == 3 and saved["base_model"] == TINY
    done = CliRunner().invoke(cli, ["train", "fact_checker", "--lr-scheduler", "sometimes", "--dry-run"])
    assert done.exit_code == 2 and "'sometimes' is not one of 'linear', 'cosine'" in done.output


def test_train_help_is_readable_and_imports_no_heavy_library():
    done = CliRunner().invoke(cli, ["train", "--help"])
    assert done.exit_code == 0
    assert "--base-model, --model_name_or_path, --model-name-or-path TEXT" in done.output
    assert "Fraction of rows held out for evaluation. [0.1]" in " ".join(done.output.split())
    assert "builtin" not in done.output
    assert heavy_imports_after(["train", "--help"]) == []
