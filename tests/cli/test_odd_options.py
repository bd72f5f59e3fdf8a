"""Options that used to do nothing, or the wrong thing, silently; and errors that were tracebacks or wrong words."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from tests.helpers import TINY

QUICK = ["--model_name_or_path", TINY, "--max-train-samples", "8"]


def jnreg(*args: str):
    done = CliRunner().invoke(cli, list(args))
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done


def error_line(done) -> str:
    return done.output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("modules", "named"), [("nonexistent_proj", "nonexistent_proj"), ("q_proj,bogus_proj", "bogus_proj")]
)
def test_target_modules_that_match_nothing_are_named_in_the_dry_run_and_the_run(
    builtin_agents, tmp_path, modules, named
):
    for mode in (["--dry-run"], ["--max-steps", "1"]):
        out = tmp_path / mode[0].strip("-") / "adapter"
        done = jnreg("train", "fact_checker", *QUICK, "--output-dir", str(out), "--target-modules", modules, *mode)
        assert done.exit_code == 1, done.output
        assert error_line(done).startswith(
            f"Error: cannot apply LoRA: --target-modules {named}: no module of the model is called that;"
        )
        assert "q_proj" in error_line(done).split(";")[1]  # the names it does have
        # The failed run made the directory and leaves nothing behind.
        assert not out.parent.exists()


def test_a_failed_run_leaves_no_empty_directory_and_names_what_it_left(builtin_agents, tmp_path):
    new = tmp_path / "new" / "adapter"
    done = jnreg("train", "fact_checker", *QUICK, "--output-dir", str(new), "--resume")
    assert done.exit_code == 1 and "no checkpoint" in error_line(done)
    assert not (tmp_path / "new").exists()
    # A dry run that finds the run would not fit has written its report: it stays, and is named.
    out = tmp_path / "huge"
    done = jnreg("train", "fact_checker", *QUICK, "--output-dir", str(out), "--dry-run", "--train-batch-size", "100000")
    assert done.exit_code == 1 and "does NOT fit" in done.output
    assert f"note: the failed run left {out}: jnreg_config.json, training_summary.json" in done.output


def test_rows_truncated_or_dropped_by_max_seq_length_are_printed_by_the_run(builtin_agents, tmp_path):
    common = ["train", "fact_checker", *QUICK, "--max-steps", "1", "--eval-fraction", "0", "--max-seq-length", "225"]
    done = jnreg(*common, "--output-dir", str(tmp_path / "a"))
    assert done.exit_code == 0, done.output
    assert "row(s) over --max-seq-length 225 keep only the end of their prompt (--overlong truncate):" in done.output
    assert "fact_checker.jsonl:" in done.output  # which rows
    done = jnreg(*common, "--overlong", "drop", "--output-dir", str(tmp_path / "b"))
    assert done.exit_code == 0, done.output
    assert "row(s) over --max-seq-length 225 were dropped (--overlong drop):" in done.output


def test_adapter_version_without_publish_is_refused_like_require(builtin_agents, tmp_path):
    done = jnreg("train", "fact_checker", *QUICK, "--adapter-version", "v1", "--output-dir", str(tmp_path / "o"))
    assert done.exit_code == 1 and done.output.count("\n") == 1
    assert "--adapter-version labels the published version: add --publish" in done.output
    assert not (tmp_path / "o").exists()


def test_a_config_file_of_another_agent_says_what_it_sets(builtin_agents, tmp_path):
    settings = tmp_path / "jnreg_config.json"
    settings.write_text(json.dumps({"agent": "synthesizer", "adapter_name": "synth_v1", "max_seq_length": 512}))
    done = jnreg("train", "fact_checker", *QUICK, "--config", str(settings), "--dry-run", "--output-dir",
                 str(tmp_path / "out"))  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (
        f"note: {settings} was written for agent synthesizer; training fact_checker with its "
        "adapter_name=synth_v1, max_seq_length=512" in done.output
    )
    settings.write_text(json.dumps({"agent": "fact_checker", "seed": 7}))
    done = jnreg("train", *QUICK, "--config", str(settings), "--dry-run", "--output-dir", str(tmp_path / "out2"))
    assert done.exit_code == 0 and f"from {settings}: seed=7" in done.output


def test_train_files_naming_a_directory_says_so(builtin_agents, tmp_path):
    done = jnreg("train", "fact_checker", "--model_name_or_path", TINY, "--train-files", str(tmp_path), "--dry-run",
                 "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert done.exit_code == 1
    assert f"{tmp_path} is a directory, not a data file; give its files, e.g. '{tmp_path}/*.jsonl'" in error_line(done)


def test_json_errors_name_the_place_once(builtin_agents, tmp_path):
    settings = tmp_path / "bad.json"
    settings.write_text('{"adapter_name": "a\tb"}')
    done = jnreg("train", "fact_checker", "--config", str(settings))
    assert done.exit_code == 1
    assert "invalid JSON: Invalid control character at line 1 column 20" in done.output
    assert "at at" not in done.output and "at:" not in done.output
    rows = tmp_path / "rows.json"
    rows.write_text('[{"prompt": "a\tb"}]')
    done = jnreg("train", "fact_checker", *QUICK, "--train-files", str(rows), "--dry-run", "--output-dir",
                 str(tmp_path / "o"))  # fmt: skip
    assert done.exit_code == 1 and error_line(done).endswith("invalid JSON: Invalid control character (column 15)")


@pytest.mark.parametrize(
    "option", [["--max-new-tokens", "0"], ["--max-new-tokens", "-3"], ["--temperature", "-1"], ["--temperature", "nan"]]
)
def test_generate_checks_ranges_as_eval_does(builtin_agents, tmp_path, option):
    for command in (["generate", "fact_checker", "Claim: it rained."], ["eval", "fact_checker"]):
        done = jnreg("--store-root", str(tmp_path / "store"), *command, *option)
        assert done.exit_code == 2, done.output
        assert f"Invalid value for '{option[0]}'" in done.output


def test_export_and_agents_new_into_places_that_cannot_be_written_are_one_line(builtin_agents, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    done = jnreg("--store-root", str(tmp_path / "store"), "export", "fact_checker", "--merged", str(afile / "sub"))
    assert done.exit_code == 1 and done.output.count("\n") == 1
    assert f"cannot export into {afile / 'sub'}: {afile} is a file, not a directory" in done.output
    # /proc takes no new directories, not even root's.
    done = jnreg("--store-root", str(tmp_path / "store"), "export", "fact_checker", "--merged", "/proc/jnreg-merged")
    assert done.exit_code == 1 and done.output.count("\n") == 1
    assert "cannot write the export into /proc:" in done.output
    done = jnreg("agents", "new", "weather_desk", "--dir", "/proc/jnreg-plugin")
    assert done.exit_code == 1 and done.output.count("\n") == 1
    assert "cannot write the plugin into /proc/jnreg-plugin:" in done.output
