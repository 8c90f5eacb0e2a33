"""Hostile specs never execute code (language contract, section 11).

Every hostile spec either raises ``ssmc.SpecError`` or compiles to a module in which
the hostile text is data: it sits inside string literals (or comments) of the
generated source, the source has the same structure as the one generated from a
benign spec, it calls nothing that runs code (eval, exec, __import__, system, ...),
and the sentinel file the payload would create never appears, not even after the
module is instantiated and run.
"""
from __future__ import annotations

import ast
import io
import tokenize

import pytest
import torch

import ssmc

BACKENDS = ["numpy", "torch"]

# Calls the generated code never makes; a payload that got out would make one of them.
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "system", "popen", "spawn", "run", "call",
                   "check_output", "open", "getattr", "setattr", "delattr", "globals", "locals", "vars",
                   "breakpoint", "input", "import_module", "remove", "unlink", "rmtree"}
ALLOWED_IMPORTS = {"numpy", "torch", "triton", "ssmc", "ssmc.runtime", "math", "__future__"}
# Tokens in which hostile text is inert.
INERT = {tokenize.STRING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE}
for _name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"):
    if hasattr(tokenize, _name):
        INERT.add(getattr(tokenize, _name))


def spec(description: str | None = None, replace: dict[str, str] | None = None) -> str:
    head = f'ssm T "{description}" {{' if description is not None else "ssm T {"
    text = "\n".join([
        head,
        "  dims H = 4, N = 8",
        "  input u[H]",
        "  state x[H, N]",
        "  param A_log[H, N] = log(1 + arange(N))",
        "  param B[H, N] = normal(0, 1)",
        "  param C[H, N] = normal(0, 1)",
        "  param D[H] = ones",
        "  param log_dt[H] = log_uniform(0.001, 0.1)",
        "  A = -exp(A_log) : diagonal",
        "  dynamics x' = A x + B * u",
        "  discretize zoh, step = exp(log_dt)",
        "  scan causal",
        "  output y = sum(C * x, N) + D * u",
        "}",
        "",
    ])
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return text


def _shape(source: str) -> str:
    """The generated module's AST with every string literal blanked out."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.dump(tree)


def assert_inert(mod, markers=(), baseline: str | None = None) -> None:
    """The generated source runs no hostile code; `markers` appear only inside literals."""
    source = mod.__ssmc_source__
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            assert name not in FORBIDDEN_CALLS, f"generated code calls {name}()"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name in ALLOWED_IMPORTS, f"generated code imports {alias.name}"
        if isinstance(node, ast.ImportFrom):
            assert node.module in ALLOWED_IMPORTS, f"generated code imports from {node.module}"
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in INERT:
            continue
        for m in markers:
            assert m not in tok.string, f"{m!r} escaped into code: {tok.line!r}"
    if baseline is not None:
        assert _shape(source) == _shape(baseline), "hostile text changed the structure of the generated code"


def run_layer(mod) -> None:
    (name,) = mod.__all__
    layer = getattr(mod, name)(seed=0)
    u = torch.randn(2, 5, 4, dtype=torch.float64)
    y = layer(u)
    assert y.shape == (2, 5, 4)
    assert torch.isfinite(y).all()


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a hostile spec executed code"


def _payloads(sentinel) -> list[tuple[str, str]]:
    """(text as written between the spec's quotes, the description it stands for)."""
    s = str(sentinel)
    call = f"__import__('os').system('touch {s}')"
    return [
        (f'\\"\\"\\" + {call} + \\"\\"\\"', f'""" + {call} + """'),
        (f"''' + {call} + '''", f"''' + {call} + '''"),
        (f"'; {call}; '", f"'; {call}; '"),
        (f"line\\n{call}\\n# ", f"line\n{call}\n# "),
        (f"\\n\\\"\\\"\\\"\\nimport os\\nos.system('touch {s}')\\n", f'\n"""\nimport os\nos.system(\'touch {s}\')\n'),
        (f"{{{call}}} %s %(x)s {{0}}", f"{{{call}}} %s %(x)s {{0}}"),
        (f"trailing backslash \\\\", "trailing backslash \\"),
        # `\n`, `\t`, `\"` and `\\` are escapes; any other `\c` stands for `c`.
        (f"open('{s}', 'w').write('x') \\r\\t", f"open('{s}', 'w').write('x') r\t"),
        (f"\u2028{call}\u2029", f"\u2028{call}\u2029"),
        (f"\x0c{call}\x0b", f"\x0c{call}\x0b"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(10))
def test_hostile_description_is_data(backend, index, sentinel):
    written, meant = _payloads(sentinel)[index]
    text = spec(written)
    try:
        mod = ssmc.loads(text, backend=backend)
    except ssmc.SpecError:
        return
    baseline = ssmc.loads(spec("benign"), backend=backend).__ssmc_source__
    assert_inert(mod, markers=("__import__", "system", "pwned", "open("), baseline=baseline)
    assert mod.T.DESCRIPTION == meant
    run_layer(mod)


@pytest.mark.parametrize("backend", BACKENDS)
def test_description_with_raw_newline_is_a_syntax_error(backend, sentinel):
    text = spec(f"x\n__import__('os').system('touch {sentinel}')\n")
    with pytest.raises(ssmc.SpecError):
        ssmc.loads(text, backend=backend)


HOSTILE_NAMES = ["__class__", "__import__", "__builtins__", "__dict__", "_", "exec", "eval", "compile", "open",
                 "getattr", "globals", "breakpoint", "print", "type", "object", "super", "lambda", "import",
                 "def", "class", "None", "True", "self", "os", "sys", "subprocess", "shutil", "builtins",
                 "ssmc", "rt", "np", "torch", "numpy", "F", "nn"]
# Where a name can appear, as a rewrite of the benign spec.
PLACES = {
    "param": lambda n: {"log_dt": n},
    "value": lambda n: {"  A = -exp(A_log) : diagonal": f"  {n} = -exp(A_log) : diagonal",
                        "x' = A x": f"x' = {n} x"},
    "dim": lambda n: {"N": n},
    "input": lambda n: {" u[H]": f" {n}[H]", "B * u": f"B * {n}", "D * u": f"D * {n}"},
    "state": lambda n: {"x[H, N]": f"{n}[H, N]", "x' = A x": f"{n}' = A {n}", "C * x": f"C * {n}"},
    "output": lambda n: {"output y": f"output {n}"},
    "block": lambda n: {"ssm T": f"ssm {n}"},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names(backend, place, name, sentinel):
    text = spec(replace=PLACES[place](name))
    try:
        mod = ssmc.loads(text, backend=backend)
    except ssmc.SpecError as e:
        assert e.line is not None
        return
    assert_inert(mod)
    run_layer(mod)


def test_name_ops_does_not_shadow_the_torch_runtime():
    # `ops` is the torch backend's alias for ssmc.runtime.torch_ops: it is reserved.
    text = spec(replace={"log_dt": "ops"})
    with pytest.raises(ssmc.SpecError, match="reserved"):
        ssmc.loads(text, backend="torch")


@pytest.mark.parametrize("expr", ["__import__('os')", "eval(u)", "exec(u)", "getattr(u, H)", "u.__class__",
                                  "u[0]", "lambda: 1", "`u`", "u if u else u", "'os'", "\"os\"", "u; import os",
                                  "{u}", "[u]", "u @ u", "u % 2", "u // 2", "not u", "u and u"])
def test_python_syntax_in_expressions_is_refused(expr, sentinel):
    text = spec(replace={"discretize zoh, step = exp(log_dt)": f"discretize zoh, step = exp(log_dt) * ({expr})"})
    with pytest.raises(ssmc.SpecError):
        ssmc.loads(text, backend="numpy")


@pytest.mark.parametrize("where, option", [
    ("discretize zoh", "discretize __import__"),
    ("scan causal", "scan __import__"),
    ("scan causal", "scan bidirectional(merge = __import__)"),
    ("scan causal", "scan bidirectional(params = exec)"),
    (": diagonal", ": __import__"),
    (": diagonal", ": block_diagonal(blocks = __import__)"),
])
def test_hostile_vocabulary_words(where, option):
    with pytest.raises(ssmc.SpecError):
        ssmc.loads(spec(replace={where: option}), backend="numpy")


NUMBERS = ["1e999", "-1e999", "1e999j", "1e308 * 10", "99999999999999999999999999999999999999999",
           "1e-999", "0.0000000000000000000000000001", "1" + "0" * 5000, "1e309", ".5e-3", "5.", "0x10", "1_000",
           "1e", "1e+", "nan", "inf", "1/0"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("number", NUMBERS)
def test_hostile_numbers(backend, number, sentinel):
    text = spec(replace={"param D[H] = ones": f"param D[H] = ({number}) * 0 + 1"})
    try:
        mod = ssmc.loads(text, backend=backend)
    except ssmc.SpecError as e:
        assert e.line == 8
        return
    assert_inert(mod)


@pytest.mark.parametrize("number", ["1e999", "1" + "0" * 5000, "2 ** 64 ** 64", "((2 ** 64) ** 64) ** 64"])
def test_hostile_numbers_in_dims(number):
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(spec(replace={"dims H = 4": f"dims H = {number}"}), backend="numpy")
    assert info.value.line == 2


def _hostile_filenames(sentinel):
    call = f"__import__('os').system('touch {sentinel}')"
    return [
        f'evil"\n{call}\n#.ssm',
        f"evil'\n{call}\n#.ssm",
        f'"""\n{call}\n""".ssm',
        f"'''\n{call}\n'''.ssm",
        f"a\\\n{call}\r\n.ssm",
        f"\x00{call}",
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(6))
def test_hostile_filename(backend, index, sentinel):
    filename = _hostile_filenames(sentinel)[index]
    try:
        mod = ssmc.loads(spec(), backend=backend, filename=filename)
    except ssmc.SpecError:
        return
    baseline = ssmc.loads(spec(), backend=backend, filename="benign.ssm").__ssmc_source__
    assert_inert(mod, markers=("__import__", "system", "pwned"), baseline=baseline)
    assert mod.T.SOURCE == filename
    run_layer(mod)


@pytest.mark.parametrize("index", range(6))
def test_hostile_filename_in_an_error(index, sentinel):
    filename = _hostile_filenames(sentinel)[index]
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(spec(replace={"D * u": "DD * u"}), backend="numpy", filename=filename)
    e = info.value
    if "\x00" in filename:  # refused for its name before the text is read
        assert "NUL" in e.message
    else:
        assert e.filename == filename
        assert (e.line, e.column) == (14, 30)
    assert "DD" in str(e) or "NUL" in str(e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_path_on_disk(tmp_path, monkeypatch, backend, sentinel):
    monkeypatch.chdir(tmp_path)  # the payload writes `pwned` relative to here: a name cannot hold '/'
    path = tmp_path / f"evil'\n__import__('os').system('touch {sentinel.name}')\n#.ssm"
    path.write_text(spec())
    mod = ssmc.load(path, backend=backend)
    assert_inert(mod, markers=("__import__", "system", "pwned"))
    run_layer(mod)
    check = ssmc.check(path)
    assert check.graphs


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_source_is_plain_python(backend, sentinel):
    """`ssmc.compile_source` output, written to a file and imported, is as inert as `loads`."""
    from ssmc.errors import Source

    written, _ = _payloads(sentinel)[0]
    text = ssmc.compile_source(Source(spec(written), "x.ssm"), backend=backend)
    ast.parse(text)
    namespace: dict = {}
    exec(compile(text, "<generated>", "exec"), namespace)  # the generated module itself, not the spec
    assert "T" in namespace
