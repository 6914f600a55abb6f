"""AppTests of the app shell (model picker, status line, error display) and the `steerlab dashboard` command."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from steerlab.viz.model import si, status_line

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "dashboards" / "app.py")
OTHER = "Other: local folder or hub id…"


def _app(monkeypatch, tmp_path, model: str = "shared:stories260K") -> AppTest:
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", model)
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    return at


def test_status_line_names_model_architecture_size_device_dtype_memory(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path)
    assert not at.exception
    assert at.sidebar.selectbox(key="model.choice").value == "shared:stories260K"
    status = at.sidebar.caption[0].value
    parts = status.split(" · ")
    assert parts[:5] == ["shared:stories260K", "LlamaForCausalLM", "260K params", "cpu", "float32"]
    assert parts[5].startswith("RSS ") and parts[5].endswith(" MiB")
    # AppTest runs the page in this process: the kernel's own count (VmRSS, not the statm the page reads)
    proc = Path("/proc/self/status")
    if proc.exists():  # Linux
        vmrss_mib = int(next(x for x in proc.read_text().splitlines() if x.startswith("VmRSS:")).split()[1]) / 1024
        assert abs(int(parts[5][4:-4].replace(",", "")) - vmrss_mib) < 0.1 * vmrss_mib


def test_other_model_errors_are_messages_not_tracebacks(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path)
    at.sidebar.selectbox(key="model.choice").set_value(OTHER).run()
    assert not at.exception
    assert "no model chosen" in at.error[0].value
    assert at.sidebar.caption[0].value.startswith("no model chosen")
    at.sidebar.text_input(key="model.other").set_value(str(tmp_path / "no-such-model")).run()
    assert not at.exception
    assert "does not exist; expected an existing Hugging Face model folder" in at.error[0].value
    assert "failed to load" in at.sidebar.caption[0].value
    (tmp_path / "empty").mkdir()
    at.sidebar.text_input(key="model.other").set_value(str(tmp_path / "empty")).run()
    assert "has no config.json" in at.error[0].value
    at.sidebar.selectbox(key="model.choice").set_value("shared:stories260K").run()
    assert not at.error and at.sidebar.caption[0].value.startswith("shared:stories260K · LlamaForCausalLM")


def _guarded(root: str) -> None:
    import sys

    sys.path.insert(0, root)
    import streamlit as st

    from dashboards.lib.shell import guard
    from steerlab.errors import SpecError

    with guard("Dividing"):
        st.write(1 / 0)
    with guard("Parsing"):
        raise SpecError("scale must be finite, got nan")
    st.write("still running")


def test_guard_turns_any_error_into_a_message():
    at = AppTest.from_function(_guarded, args=(str(ROOT),), default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Dividing failed: ZeroDivisionError: division by zero",
                                           "scale must be finite, got nan"]
    assert at.markdown[-1].value == "still running"


def test_status_line_for_moe_and_unloaded_models(tiny):
    h = tiny("mixtral")
    info = h.info()
    moe = info["moe"]
    line = status_line(info, h.spec, rss=3 * 2**20)
    assert f"(MoE {moe['n_experts']} experts, top-{moe['top_k']})" in line and line.endswith("RSS 3 MiB")
    unloaded = status_line(None, "organism:moe", 0)
    assert unloaded == "organism:moe · not loaded yet (loads when a page needs it) · RSS 0 MiB"
    assert "failed to load" in status_line(None, "x", 0, failed=True)
    assert status_line(None, "", 0).startswith("no model chosen")
    assert [si(n) for n in (512, 260032, 1.35e8, 7e9)] == ["512", "260K", "135M", "7B"]


def test_cli_dashboard_command_binds_localhost_and_checks_its_input(tmp_path):
    from steerlab.cli.main import app

    runner = CliRunner()
    out = runner.invoke(app, ["dashboard", "--dry-run", "--port", "8611", "--model", "shared:stories260K",
                              "--runs", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    cmd = out.output.splitlines()[0].split()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8611"
    assert cmd[cmd.index("run") + 1].endswith("dashboards/app.py")
    assert f"STEERLAB_RUNS={tmp_path / 'r'}" in out.output
    assert "STEERLAB_DASHBOARD_MODEL=shared:stories260K" in out.output
    out = runner.invoke(app, ["dashboard", "--dry-run", "--host", "0.0.0.0"])
    assert "--server.address 0.0.0.0" in out.output
    bad = runner.invoke(app, ["dashboard", "--dry-run", "--port", "70000"])
    assert bad.exit_code == 2 and "--port must be in 1..65535, got 70000" in bad.output
    bad = runner.invoke(app, ["dashboard", "--dry-run", "--model", "shared:nope"])
    assert bad.exit_code == 2 and "no shared model 'nope'" in bad.output


def test_an_upload_is_saved_under_the_runs_folder_by_its_base_name_only(monkeypatch, tmp_path):
    """The uploaded file's name comes from the browser: a path in it cannot place the file outside
    runs/uploads, and a rewrite replaces the file whole."""
    from dashboards.lib.shell import save_upload

    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    uploads = tmp_path / "runs" / "uploads"
    for name, base in (("../../evil.jsonl", "evil.jsonl"), ("/etc/x.jsonl", "x.jsonl"),
                       ("C:\\Users\\me\\p.jsonl", "p.jsonl"), ("..", "upload.."), ("", "upload"),
                       (".hidden.jsonl", "upload.hidden.jsonl"), ("pairs.jsonl", "pairs.jsonl")):
        assert save_upload(name, b"{}\n") == uploads / base
    save_upload("pairs.jsonl", b"new\n")
    assert (uploads / "pairs.jsonl").read_bytes() == b"new\n"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        Path("runs/uploads") / b for b in ("evil.jsonl", "x.jsonl", "p.jsonl", "upload..", "upload",
                                            "upload.hidden.jsonl", "pairs.jsonl"))
