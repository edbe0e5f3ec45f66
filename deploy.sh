#!/usr/bin/env bash
# Deploys skill-email's targets as 2nd-gen Cloud Functions (Cloud Run functions), with their service
# account, secret access, optional Cloud SQL connection, invokers and the Cloud Scheduler job that
# drives refresh_tokens. Every step is create-or-update, so running it again is safe.
# Operator notes: docs/deploy.md.   Usage: ./deploy.sh --help
#
# This file is the list of gcloud steps. What to deploy and how (the options, env.yaml, the targets of
# shared/targets.py, the connection budget) is decided by devtools/deploy_plan.py, which hands the
# steps their values as tab-separated records. Written for bash 3.2 too (macOS): no associative
# arrays, no mapfile, no ${x,,}.
set -euo pipefail

PROG="${0##*/}"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

# The source tree is this script's directory: "--source ." and the relative paths below mean it.
cd "$(dirname "$0")"
[ -f main.py ] || die "main.py not found next to $PROG: run it from the skill-email source tree"

# The planner's interpreter (and the migration's): $PYTHON, else the project's .venv, which tasks.py
# creates with PyYAML and the rest of requirements-dev.txt when it is missing (Python 3.11+ needed).
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ ! -x .venv/bin/python ]; then
        log "no .venv yet: creating it with python3 tasks.py venv"
        python3 tasks.py venv >&2 || die "could not create .venv (Python 3.11+ needed): see docs/deploy.md"
    fi
    PY=.venv/bin/python
fi
for arg in "$@"; do
    case "$arg" in -h | --help) exec "$PY" -m devtools.deploy_plan --help ;; esac
done

# ---------------------------------------------------------------------------------------------------
# The plan: "var NAME VALUE" sets a shell variable; other records are read by the steps below.
PLAN="$("$PY" -m devtools.deploy_plan "$@")" || exit $?
FUNCTIONS=() INVOKERS=() SECRETS=() APIS=()
while IFS= read -r record; do
    IFS=$'\t' read -r kind rest <<<"$record"
    case "$kind" in
        var)
            IFS=$'\t' read -r _ name value <<<"$record"
            [[ "$name" =~ ^[A-Z_]+$ ]] || die "bad plan record: $record"
            printf -v "$name" '%s' "$value"
            ;;
        api) APIS+=("$rest") ;;
        secret) SECRETS+=("$rest") ;;
        function) FUNCTIONS+=("$rest") ;;
        invoker) INVOKERS+=("$rest") ;;
        *) die "bad plan record: $record" ;;
    esac
done <<<"$PLAN"

# ---------------------------------------------------------------------------------------------------
# Running. In --dry-run each command is printed to stdout, quoted with printf %q so the output is a
# script that can be copy-pasted; @@NAME@@ in an argument is printed as "${NAME}", a shell variable
# that an earlier printed line sets from gcloud's answer.
quote() {
    local line
    printf -v line '%q ' "$@"
    line="${line% }"
    printf '%s' "$line" | sed -E 's/@@([A-Z_]+)@@/"${\1}"/g'
}

run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '%s\n' "$(quote "$@")"
    else
        log "+ $(quote "$@")"
        "$@"
    fi
}

# exists DESCRIBE... -- whether a describe command succeeds (its output is dropped).
exists() { "$@" >/dev/null 2>&1; }

# create_unless_exists [DESCRIBE...] [CREATE...]: both given as arrays by name.
create_unless_exists() {
    local -a describe create
    eval "describe=(\"\${$1[@]}\")"
    eval "create=(\"\${$2[@]}\")"
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '%s || %s\n' "$(quote "${describe[@]}")" "$(quote "${create[@]}")"
    elif exists "${describe[@]}"; then
        log "exists: $(quote "${describe[@]:0:5}")"
    else
        run "${create[@]}"
    fi
}

# update_or_create [DESCRIBE...] [UPDATE...] [CREATE...]: arrays by name (not describe, update or
# create, which name the locals here), like create_unless_exists.
update_or_create() {
    local -a describe update create
    eval "describe=(\"\${$1[@]}\")"
    eval "update=(\"\${$2[@]}\")"
    eval "create=(\"\${$3[@]}\")"
    if [ "$DRY_RUN" -eq 1 ]; then
        printf 'if %s; then %s; else %s; fi\n' "$(quote "${describe[@]}")" "$(quote "${update[@]}")" \
            "$(quote "${create[@]}")"
    elif exists "${describe[@]}"; then
        run "${update[@]}"
    else
        run "${create[@]}"
    fi
}

# capture VAR DESCRIBE...: sets VAR to the command's output; in --dry-run prints VAR="$(...)" and sets
# VAR to @@VAR@@ so later commands print "${VAR}".
capture() {
    local var="$1"
    shift
    if [ "$DRY_RUN" -eq 1 ]; then
        # shellcheck disable=SC2016  # $(...) is printed for the reader's shell, not run here.
        printf '%s="$(%s)"\n' "$var" "$(quote "$@")"
        printf -v "$var" '@@%s@@' "$var"
    else
        local out
        out="$("$@")"
        [ -n "$out" ] || die "no answer from: $(quote "$@")"
        printf -v "$var" '%s' "$out"
    fi
}

G=(gcloud --project "$PROJECT" --quiet)

# ---------------------------------------------------------------------------------------------------
# 1. APIs
log "enabling APIs"
run "${G[@]}" services enable "${APIS[@]}"

# 2. Runtime service account (and, in step 7, the scheduler's). An empty NAME: an existing account.
ensure_sa() {
    local name="$1" email="$2" display="$3"
    if [ -z "$name" ]; then
        log "using the existing service account $email"
        return
    fi
    # shellcheck disable=SC2034  # read through create_unless_exists's eval
    local -a d=("${G[@]}" iam service-accounts describe "$email" --format "value(email)")
    # shellcheck disable=SC2034  # likewise
    local -a c=("${G[@]}" iam service-accounts create "$name" --display-name "$display")
    create_unless_exists d c
}
ensure_sa "$SA_NAME" "$SA_EMAIL" "skill-email functions"

# 3. Secret access: the one DB URL secret (and the token key secret when set), never project-wide.
for secret in ${SECRETS[@]+"${SECRETS[@]}"}; do
    IFS=$'\t' read -r s_name s_project <<<"$secret"
    run gcloud --project "$s_project" --quiet secrets add-iam-policy-binding "$s_name" \
        --member "serviceAccount:$SA_EMAIL" --role roles/secretmanager.secretAccessor --condition None
done

# 4. Cloud SQL: roles/cloudsql.client can only be granted on the instance's project.
if [ -n "$CLOUDSQL_INSTANCE" ]; then
    run gcloud --project "${CLOUDSQL_INSTANCE%:*:*}" --quiet projects add-iam-policy-binding \
        "${CLOUDSQL_INSTANCE%:*:*}" --member "serviceAccount:$SA_EMAIL" --role roles/cloudsql.client \
        --condition None
fi

# 5. Migrations, before new code runs against the schema. The URL goes to the child's environment
# only; it is never printed (not even with --dry-run, which prints the command that fetches it).
if [ "$MIGRATE" -eq 1 ]; then
    access=(gcloud --project "$DB_SECRET_PROJECT" --quiet secrets versions access "$DB_SECRET_VERSION"
        --secret "$DB_SECRET_NAME")
    if [ "$DRY_RUN" -eq 1 ]; then
        # shellcheck disable=SC2016  # $(...) is printed for the reader's shell: the URL stays unprinted.
        printf 'DATABASE_URL="$(%s)" %s -m shared.cli migrate\n' "$(quote "${access[@]}")" "$(quote "$PY")"
    else
        log "+ DATABASE_URL=\"\$($(quote "${access[@]}"))\" $PY -m shared.cli migrate"
        db_url="$("${access[@]}")" || die "could not read secret $DB_SECRET_NAME (version $DB_SECRET_VERSION)"
        [ -n "$db_url" ] || die "secret $DB_SECRET_NAME is empty"
        DATABASE_URL="$db_url" "$PY" -m shared.cli migrate || die "migration failed"
        unset db_url
    fi
fi

# 6. The functions, each with its generated env file (env.yaml plus what the plan adds: THREADS to
# match the concurrency, as Google advises for Python, and GOOGLE_CLOUD_PROJECT, which the python312
# runtime does not set). --env-vars-file replaces all variables, so nothing else sets any.
for fn in ${FUNCTIONS[@]+"${FUNCTIONS[@]}"}; do
    IFS=$'\t' read -r t memory cpu timeout instances concurrency env_file ingress <<<"$fn"
    log "deploying $t"
    run "${G[@]}" functions deploy "$t" --gen2 --runtime "$RUNTIME" --region "$REGION" --source . \
        --entry-point "$t" --trigger-http --no-allow-unauthenticated --env-vars-file "$env_file" \
        --service-account "$SA_EMAIL" --memory "$memory" --cpu "$cpu" --timeout "$timeout" \
        --max-instances "$instances" --concurrency "$concurrency" --ingress-settings "$ingress"

    if [ -n "$CLOUDSQL_INSTANCE" ]; then
        # A 2nd-gen function is a Cloud Run service, and "functions deploy" has no Cloud SQL flag:
        # the connection (the /cloudsql/INSTANCE unix socket) is set on that service. Re-applied after
        # every deploy because a deploy may reset settings made on the service directly; "add" keeps
        # connections someone else configured.
        capture SERVICE "${G[@]}" functions describe "$t" --gen2 --region "$REGION" \
            --format "value(serviceConfig.service.basename())"
        run "${G[@]}" run services update "$SERVICE" --region "$REGION" \
            --add-cloudsql-instances "$CLOUDSQL_INSTANCE"
    fi

    for grant in ${INVOKERS[@]+"${INVOKERS[@]}"}; do
        IFS=$'\t' read -r target who <<<"$grant"
        [ "$target" = "$t" ] || continue
        # For 2nd gen this binds roles/run.invoker on the function's Cloud Run service.
        run "${G[@]}" functions add-invoker-policy-binding "$t" --region "$REGION" --member "$who"
    done
done

# 7. Cloud Scheduler: POST {} to the scheduled target every few minutes with a Google-signed OIDC token
# whose audience is the function's cloudfunctions.net URL, one of the CALLER_AUDIENCES it checks.
if [ -n "$SCHEDULED_TARGET" ]; then
    ensure_sa "$SCHEDULER_SA_NAME" "$SCHEDULER_SA_EMAIL" "skill-email scheduler (calls $SCHEDULED_TARGET)"
    run "${G[@]}" functions add-invoker-policy-binding "$SCHEDULED_TARGET" --region "$REGION" \
        --member "serviceAccount:$SCHEDULER_SA_EMAIL"
    capture REFRESH_TOKENS_URL "${G[@]}" functions describe "$SCHEDULED_TARGET" --gen2 --region "$REGION" \
        --format "value(serviceConfig.uri)"
    # attempt-deadline 600s: above the function's 540s timeout, so the job records the function's
    # own answer instead of cancelling a run that is still working.
    common=(--location "$REGION" --schedule "$SCHEDULE" --time-zone Etc/UTC --uri "$REFRESH_TOKENS_URL"
        --http-method POST --message-body "{}" --oidc-service-account-email "$SCHEDULER_SA_EMAIL"
        --oidc-token-audience "$SCHEDULED_AUDIENCE" --attempt-deadline 600s
        --description "skill-email: refresh Gmail tokens close to expiry")
    # shellcheck disable=SC2034  # the three arrays are read through update_or_create's eval
    job_describe=("${G[@]}" scheduler jobs describe "$SCHEDULER_JOB" --location "$REGION" --format "value(name)")
    # shellcheck disable=SC2034  # likewise
    job_update=("${G[@]}" scheduler jobs update http "$SCHEDULER_JOB" "${common[@]}"
        --update-headers Content-Type=application/json)
    # shellcheck disable=SC2034  # likewise
    job_create=("${G[@]}" scheduler jobs create http "$SCHEDULER_JOB" "${common[@]}"
        --headers Content-Type=application/json)
    update_or_create job_describe job_update job_create
fi

if [ "$DRY_RUN" -eq 1 ]; then log "dry run: nothing was changed"; else log "done"; fi
