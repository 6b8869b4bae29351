# Installs Debian packages that are missing; sourced by the README's two commands.
# Usage: ensure_packages NAME...
ensure_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing packages ${missing[*]}; run as root or install them first" >&2
        return 1
    fi
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Rust toolchain cannot come from apt (Debian's is too old for edition 2024).
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found; install Rust 1.90 or newer with rustup, then rerun" >&2
        return 1
    fi
}

# Namespaces and TUN devices need root. Usage: require_root "what needs it"
require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $1 needs root (network namespaces and TUN devices)" >&2
        exit 1
    fi
}

# Unpacks a Debian package into DIR without installing it (a test runs it in a private mount
# namespace; installing systemd-resolved would relink the host's /etc/resolv.conf), at the
# version of the installed package SAME_AS (its shared library must match).
# Usage: unpack_package NAME SAME_AS DIR
unpack_package() {
    local name=$1 same_as=$2 dir=$3 version work
    version=$(dpkg-query -W -f='${Version}' "$same_as")
    [ -e "$dir/.version" ] && [ "$(cat "$dir/.version")" = "$version" ] && return 0
    work=$(mktemp -d)
    if ! (cd "$work" && apt-get download -qq "$name=$version" 2>/dev/null); then
        apt-get update -qq
        (cd "$work" && apt-get download -qq "$name=$version")
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    dpkg-deb -x "$work"/"$name"_*.deb "$dir"
    echo "$version" >"$dir/.version"
    rm -rf "$work"
}
