#!/usr/bin/env bash
# Roll a new model version out to a tagged revision, split traffic, promote or roll back.
#
#   knative/rollout.sh stage   v2 [SOURCE]   # prefetch SOURCE (fsspec URI or "default") into /models/v2 and check it
#   knative/rollout.sh canary  v2 [PERCENT]  # new revision with MODEL_VERSION=v2 under tag v2, PERCENT% of traffic (default 10)
#   knative/rollout.sh promote v2            # 100% to the v2 revision
#   knative/rollout.sh rollback              # 100% back to the revision tagged "stable"
#
# Checks before traffic moves: the model set exists on the volume and `python -m warmup check` loads
# and exercises it (run as a Job with the same image and volume), and the tagged revision is Ready.
set -euo pipefail
NS=${NAMESPACE:-facefusion}
SVC=${SERVICE:-facefusion}
IMAGE=${IMAGE:-$(kubectl -n "$NS" get ksvc "$SVC" -o jsonpath='{.spec.template.spec.containers[0].image}')}
die() { echo "rollout: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is required"; }
need kubectl; need kn

check_job() {  # $1: version, $2: command (prefetch or check)
  local version=$1 name="facefusion-${2}-${1//[^a-z0-9-]/-}"; shift 2
  kubectl -n "$NS" delete job "$name" --ignore-not-found >/dev/null
  kubectl -n "$NS" apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: run
          image: $IMAGE
          command: ["python", "-m", "warmup", $(printf '"%s", ' "$@" | sed 's/, $//')]
          env: [{name: MODEL_PATH, value: /models}, {name: MODEL_VERSION, value: "$version"}, {name: CACHE_PATH, value: /tmp/cache}]
          volumeMounts: [{name: models, mountPath: /models}]
      volumes: [{name: models, persistentVolumeClaim: {claimName: facefusion-models}}]
YAML
  kubectl -n "$NS" wait --for=condition=complete "job/$name" --timeout=1800s \
    || { kubectl -n "$NS" logs "job/$name" >&2 || true; die "job $name failed"; }
  kubectl -n "$NS" logs "job/$name"
}

case "${1:-}" in
  stage)
    version=${2:?version}; source=${3:-default}
    check_job "$version" prefetch prefetch "$source" --model-path /models --version "$version"
    check_job "$version" check check ;;
  canary)
    version=${2:?version}; percent=${3:-10}
    check_job "$version" check check
    current=$(kubectl -n "$NS" get ksvc "$SVC" -o jsonpath='{.status.latestReadyRevisionName}')
    [ -n "$current" ] || die "the service has no ready revision"
    kn service update "$SVC" -n "$NS" --tag "$current=stable" --no-wait >/dev/null
    kn service update "$SVC" -n "$NS" --env "MODEL_VERSION=$version" \
      --revision-name "$SVC-$version-$(date +%s)" --tag "@latest=$version" \
      --traffic "stable=$((100 - percent))" --traffic "@latest=$percent" --wait
    echo "v$version gets $percent%: curl the tag URL to try it: $(kn route describe "$SVC" -n "$NS" -o url 2>/dev/null || true)" ;;
  promote)
    version=${2:?version}
    kn service update "$SVC" -n "$NS" --traffic "$version=100" --wait ;;
  rollback)
    kn service update "$SVC" -n "$NS" --traffic "stable=100" --wait ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac
