"""Every subprocess a test starts has a timeout, so a hung child fails its test instead of CI's 90 minutes.

Checked on the test sources themselves: each ``subprocess.run`` / ``call`` / ``check_call`` /
``check_output`` passes ``timeout=``, and each ``.wait()`` / ``.communicate()`` on a started process
passes a timeout (``Popen`` has none of its own).
"""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
RUNNERS = {"run", "call", "check_call", "check_output"}
WAITS = {"wait", "communicate"}


def calls_without_timeout(source: str) -> list[tuple[int, str]]:
    """(line, call) of every subprocess runner or process wait in ``source`` that passes no timeout."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        has_timeout = any(keyword.arg == "timeout" for keyword in node.keywords)
        runner = node.func.attr in RUNNERS and isinstance(node.func.value, ast.Name) \
            and node.func.value.id == "subprocess"
        if runner and not has_timeout:
            found.append((node.lineno, f"subprocess.{node.func.attr}"))
        elif node.func.attr in WAITS and not has_timeout and not node.args:
            found.append((node.lineno, f".{node.func.attr}()"))
    return found


def test_the_check_finds_calls_without_a_timeout():
    source = ("import subprocess\n"
              "subprocess.run(['true'])\n"
              "subprocess.run(['true'], timeout=5)\n"
              "proc = subprocess.Popen(['true'])\n"
              "proc.communicate()\n"
              "proc.wait(timeout=5)\n"
              "proc.wait(5)\n")
    assert calls_without_timeout(source) == [(2, "subprocess.run"), (5, ".communicate()")]


def test_every_subprocess_a_test_starts_has_a_timeout():
    missing = [f"{path.relative_to(TESTS)}:{line}: {call}"
               for path in sorted(TESTS.rglob("*.py"))
               for line, call in calls_without_timeout(path.read_text())]
    assert not missing, "subprocess calls without a timeout:\n  " + "\n  ".join(missing)
