# Shared by hack/build-control-plane and hack/build-node (sourced, not run).
#
# build_kube_commands WORK BIN_DIR LOG VERSION CMD...: builds k8s.io/kubernetes/cmd/CMD at VERSION
# through a wrapper module. k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
# them with local paths, which are ignored for a dependency: the wrapper pins each one to its
# release (read from the downloaded go.mod, since the list changes between minor releases).

kube_build_log() { printf '[%s] %s\n' "${KUBE_BUILD_NAME:-build}" "$*" >&2; }
kube_build_die() { kube_build_log "ERROR: $*"; exit 1; }

kube_build_run() {
  # Run a build step with its output in the log; on failure show the log's tail.
  local log="$1"; shift
  if ! "$@" >>"$log" 2>&1; then
    kube_build_log "build step failed: $*"
    kube_build_log "last lines of $log:"
    tail -n 40 "$log" >&2
    exit 1
  fi
}

build_kube_commands() {
  local work="$1" bin_dir="$2" log="$3" version="$4"; shift 4
  local cmds=("$@")
  local mod="$work/kubernetes" minor gomod_path staging m pkg c
  minor="$(cut -d. -f2 <<<"${version#v}")"
  local staging_version="v0.${version#v1.}"
  mkdir -p "$mod"
  (
    cd "$mod"
    kube_build_run "$log" go mod init samd.local/build/kubernetes
    gomod_path="$(go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [[ -f "$gomod_path" ]] || kube_build_die "could not download k8s.io/kubernetes@${version} (see $log)"
    staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._/-]*\) => \./staging/.*#\1#p' "$gomod_path")"
    [[ -n "$staging" ]] || kube_build_die "no staging modules found in $gomod_path"
    kube_build_run "$log" go mod edit -require="k8s.io/kubernetes@${version}"
    for m in $staging; do kube_build_run "$log" go mod edit -replace="$m=$m@$staging_version"; done
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=${version} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    for c in "${cmds[@]}"; do kube_build_run "$log" go get "k8s.io/kubernetes/cmd/$c@${version}"; done
    for c in "${cmds[@]}"; do
      kube_build_log "building $c ${version}"
      kube_build_run "$log" go build -trimpath -ldflags "$ldflags" -o "$bin_dir/$c.tmp" "k8s.io/kubernetes/cmd/$c"
      mv "$bin_dir/$c.tmp" "$bin_dir/$c"
    done
  )
}
