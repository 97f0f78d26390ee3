# Shared by scripts/demo and scripts/test: a virtualenv with the pinned requirements.
PYTHON=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

apt_install() {
    echo "installing $* ..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

make_venv() {  # make_venv REQUIREMENTS_FILE
    if [ ! -x .venv/bin/python ]; then
        # Debian's python3 needs python3-venv for ensurepip.
        "$PYTHON" -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; "$PYTHON" -m venv .venv; }
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$1"
}
