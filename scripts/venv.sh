# Sourced by run.sh and test.sh: creates .venv and installs the pinned dependencies once,
# again only when pyproject.toml or constraints.txt changed.
ensure_venv() {
    local extra="${1:-}"
    local python="${PYTHON:-python3}"
    local stamp=".venv/.installed${extra:+-$extra}"
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -c constraints.txt -e ".${extra:+[$extra]}"
        touch "$stamp"
    fi
}
