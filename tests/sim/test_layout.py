"""The simulator package's shape (issue 13): leaf modules with imports one way, one HMAC definition."""
from __future__ import annotations

import ast
import pathlib



SIM = pathlib.Path(__file__).resolve().parents[2] / "operator" / "tradewarden" / "sim"
# module -> the sibling modules it may import at run time (type-only imports under TYPE_CHECKING excepted)
ALLOWED = {
    "engine": set(),
    "wire": {"engine"},
    "auth": {"engine"},
    "limits": {"engine"},
    "listen_keys": {"engine"},
    "faults": {"wire"},
    "client": set(),
    "handlers": {"engine", "wire"},
    "control": {"engine", "wire"},
    "server": {"engine", "wire", "auth", "limits", "listen_keys", "faults", "handlers", "control"},
}


def runtime_sibling_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                if child.module:
                    out.add(child.module.split(".")[0])
                else:
                    out.update(a.name for a in child.names)
            visit(child)

    visit(tree)
    return out


def test_imports_point_one_way():
    for name, allowed in ALLOWED.items():
        got = runtime_sibling_imports(SIM / f"{name}.py")
        assert got <= allowed, (name, sorted(got - allowed))


def test_one_hmac_definition():
    users = [p.name for p in SIM.glob("*.py") if "hmac.new(" in p.read_text()]
    assert users == ["auth.py"]
