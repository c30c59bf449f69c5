"""`pocket exec` and `pocket cp`: their errors are one line, with or without a VM."""

from __future__ import annotations

from snaptools import Pocket, one_line_error, pocket


def test_exec_and_cp_errors(ticker_snapshot, tmp_path):
    one_line_error(pocket("exec", "ghost", "--", "true"), "no running VM named 'ghost'")
    one_line_error(pocket("cp", "a", "b"), "NAME:/absolute/path on exactly one side")
    one_line_error(pocket("cp", "vm1:/a", "vm2:/b"), "exactly one side")
    one_line_error(pocket("cp", str(tmp_path / "missing"), "vm1:/root/x"), "no such file")
    with Pocket("restore", str(ticker_snapshot), "--name", "tick") as p:
        p.wait_for("round ", 60)
        one_line_error(pocket("exec", "tick", "--", "true"), "agent")
        (tmp_path / "f").write_text("x")
        one_line_error(pocket("cp", str(tmp_path / "f"), "tick:/root/f"), "agent")
        p.send("q")
        p.wait(30)
