#!/usr/bin/env bash
# Deploys skill-email's four targets as 2nd-gen Cloud Functions (Cloud Run functions), with their
# service account, secret access, optional Cloud SQL connection, invokers and the Cloud Scheduler job
# that drives refresh_tokens. Every step is create-or-update, so running it again is safe.
# Operator notes: docs/deploy.md.   Usage: ./deploy.sh --help
#
# Written for bash 3.2 too (macOS): no associative arrays, no mapfile, no ${x,,}.
set -euo pipefail

readonly ALL_TARGETS="send_email list_emails refresh_tokens token_status"
readonly RUNTIME="python312"
readonly APIS="cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
artifactregistry.googleapis.com secretmanager.googleapis.com cloudscheduler.googleapis.com
gmail.googleapis.com iam.googleapis.com"

PROG="${0##*/}"

usage() {
    cat <<EOF
Usage: $PROG [options]

Deploys send_email, list_emails, refresh_tokens and token_status as 2nd-gen Cloud Functions
(private: callers need roles/run.invoker), plus the Cloud Scheduler job for refresh_tokens.

Options:
  --project P                 Google Cloud project (default: \$GOOGLE_CLOUD_PROJECT)
  --region R                  region of the functions and the scheduler job
                              (default: \$REGION, else us-central1)
  --service-account NAME      runtime service account of the functions, an account id created if
                              missing, or an existing account's e-mail (default: skill-email-fn)
  --env-vars-file FILE        non-secret settings (default: env.yaml)
  --db-connections N          database connections these functions may hold at once, all four
                              together (default: 20; at least 5)
  --cloudsql-instance P:R:I   connect the functions to this Cloud SQL instance (unix socket
                              /cloudsql/P:R:I) and grant the service account roles/cloudsql.client
  --invoker EMAIL             may call the functions (roles/run.invoker); repeatable. A bare
                              e-mail is a service account; user:, group:, serviceAccount: kept as is
  --only TARGET               deploy only this target; repeatable (default: all four)
  --scheduler-job NAME        Cloud Scheduler job (default: skill-email-refresh-tokens)
  --scheduler-service-account NAME
                              identity the job calls refresh_tokens with (default: skill-email-scheduler)
  --schedule CRON             when the job runs, UTC (default: "*/10 * * * *")
  --no-scheduler              leave the scheduler job alone
  --migrate                   run "python -m shared.cli migrate" here first, with DATABASE_URL read
                              from the DB_URL_SECRET secret (interpreter: \$PYTHON, else .venv/bin/python,
                              else python3)
  --work-dir DIR              where the per-function env files are written (default: .local/deploy)
  --dry-run                   print the commands instead of running them (gcloud not needed)
  -h, --help                  this text
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
usage_error() {
    printf '%s: %s\n\n' "$PROG" "$*" >&2
    usage >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------------
# Options
PROJECT="${GOOGLE_CLOUD_PROJECT:-}"
REGION="${REGION:-us-central1}"
SERVICE_ACCOUNT="skill-email-fn"
ENV_FILE="env.yaml"
DB_CONNECTIONS=20
CLOUDSQL_INSTANCE=""
INVOKERS=()
ONLY=()
SCHEDULER_JOB="skill-email-refresh-tokens"
SCHEDULER_SA="skill-email-scheduler"
SCHEDULE="*/10 * * * *"
SCHEDULER=1
MIGRATE=0
WORK_DIR=".local/deploy"
DRY_RUN=0

need_value() {
    # $1 flag, $2 number of remaining args (including the flag)
    [ "$2" -ge 2 ] || usage_error "$1 needs a value"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --*=*)
            # --flag=value: split and reparse.
            flag="${1%%=*}"
            value="${1#*=}"
            shift
            set -- "$flag" "$value" "$@"
            continue
            ;;
        --project) need_value "$1" $# && PROJECT="$2" && shift ;;
        --region) need_value "$1" $# && REGION="$2" && shift ;;
        --service-account) need_value "$1" $# && SERVICE_ACCOUNT="$2" && shift ;;
        --env-vars-file) need_value "$1" $# && ENV_FILE="$2" && shift ;;
        --db-connections) need_value "$1" $# && DB_CONNECTIONS="$2" && shift ;;
        --cloudsql-instance) need_value "$1" $# && CLOUDSQL_INSTANCE="$2" && shift ;;
        --invoker) need_value "$1" $# && INVOKERS+=("$2") && shift ;;
        --only) need_value "$1" $# && ONLY+=("$2") && shift ;;
        --scheduler-job) need_value "$1" $# && SCHEDULER_JOB="$2" && shift ;;
        --scheduler-service-account) need_value "$1" $# && SCHEDULER_SA="$2" && shift ;;
        --schedule) need_value "$1" $# && SCHEDULE="$2" && shift ;;
        --work-dir) need_value "$1" $# && WORK_DIR="$2" && shift ;;
        --no-scheduler) SCHEDULER=0 ;;
        --migrate) MIGRATE=1 ;;
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
    esac
    shift
done

# The source tree is this script's directory: "--source ." and the relative paths below mean it.
cd "$(dirname "$0")"

[ -n "$PROJECT" ] || usage_error "no project: pass --project or set GOOGLE_CLOUD_PROJECT"
[[ "$PROJECT" =~ ^[a-z][-a-z0-9.:]*[a-z0-9]$ ]] || die "--project '$PROJECT' is not a project id"
[[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || die "--region '$REGION' is not a region such as us-central1"
[[ "$DB_CONNECTIONS" =~ ^[0-9]+$ ]] || die "--db-connections must be a whole number, not '$DB_CONNECTIONS'"
[ -f "$ENV_FILE" ] || die "no env file '$ENV_FILE' (see env.yaml)"
[ -f main.py ] || die "main.py not found next to $PROG: run it from the skill-email source tree"
if [ -n "$CLOUDSQL_INSTANCE" ] && ! [[ "$CLOUDSQL_INSTANCE" =~ ^[^:]+(:[^:]+)?:[a-z0-9-]+:[^:]+$ ]]; then
    die "--cloudsql-instance must be PROJECT:REGION:INSTANCE, not '$CLOUDSQL_INSTANCE'"
fi

if [ ${#ONLY[@]} -eq 0 ]; then
    read -r -a TARGETS <<<"$ALL_TARGETS"
else
    TARGETS=()
    for t in "${ONLY[@]}"; do
        case " $ALL_TARGETS " in
            *" $t "*) TARGETS+=("$t") ;;
            *) usage_error "--only $t: not a target (one of: $ALL_TARGETS)" ;;
        esac
    done
fi

deploying() { case " ${TARGETS[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac }

# "name" -> name@PROJECT.iam.gserviceaccount.com; an e-mail is kept.
sa_email() { case "$1" in *@*) printf '%s' "$1" ;; *) printf '%s@%s.iam.gserviceaccount.com' "$1" "$PROJECT" ;; esac }
SA_EMAIL="$(sa_email "$SERVICE_ACCOUNT")"
SCHEDULER_SA_EMAIL="$(sa_email "$SCHEDULER_SA")"

# ---------------------------------------------------------------------------------------------------
# env.yaml: flat "KEY: value" lines (Cloud Functions' --env-vars-file format).
env_value() {
    local line value
    line="$(grep -E "^$1:" "$ENV_FILE" | tail -n 1 || true)"
    value="${line#*:}"
    value="${value#"${value%%[![:space:]]*}"}"
    case "$value" in
        \"*) value="${value#\"}" && value="${value%%\"*}" ;;
        \'*) value="${value#\'}" && value="${value%%\'*}" ;;
        *) value="${value%%[[:space:]]#*}" && value="${value%"${value##*[![:space:]]}"}" ;;
    esac
    printf '%s' "$value"
}

DB_URL_SECRET="$(env_value DB_URL_SECRET)"
TOKEN_KEY_SECRET="$(env_value TOKEN_KEY_SECRET)"
[ -n "$DB_URL_SECRET" ] || [ -n "$(env_value DATABASE_URL)" ] || die "$ENV_FILE sets no DB_URL_SECRET"
# The URL holds the database password: it belongs in Secret Manager, never in an env file.
if grep -qE '^DATABASE_URL:' "$ENV_FILE" || [[ "$DB_URL_SECRET" == *://* ]]; then
    die "$ENV_FILE must name the secret (DB_URL_SECRET: skill-email-db-url), not hold a database URL"
fi
if grep -qE '^THREADS:' "$ENV_FILE"; then
    die "$ENV_FILE sets THREADS: leave it out, $PROG sets it to each function's concurrency"
fi

# "S", "projects/P/secrets/S" or "projects/P/secrets/S/versions/V" -> "S P V".
split_secret() {
    local ref="$1" project="$PROJECT" version="latest"
    if [[ "$ref" =~ ^projects/([^/]+)/secrets/([^/]+)(/versions/([^/]+))?$ ]]; then
        project="${BASH_REMATCH[1]}"
        ref="${BASH_REMATCH[2]}"
        version="${BASH_REMATCH[4]:-latest}"
    elif [[ "$ref" == */* ]]; then
        die "secret '$ref' must be S, projects/P/secrets/S or projects/P/secrets/S/versions/V"
    fi
    printf '%s %s %s' "$ref" "$project" "$version"
}

# ---------------------------------------------------------------------------------------------------
# Sizes. One source tree, so every instance imports the same modules: ~150 MB resident after
# googleapiclient, its parsed Gmail discovery document, google-auth and pg8000 are loaded.
#   memory   send_email 1Gi: a largest send (24 MiB attachments -> ~33 MB base64 JSON body, the
#              decoded bytes, the 35 MB MIME message and its base64url "raw" copy) peaks near 130 MB,
#              times up to 4 concurrent requests, plus the baseline. list_emails 1Gi: 500 messages
#              with bodies, parsed from Gmail's JSON, reach a few hundred MB. token_status and
#              refresh_tokens hold one token at a time: 512Mi.
#   cpu      1 everywhere: Cloud Run functions allow concurrency > 1 only with at least 1 vCPU, and
#              a whole CPU also shortens the cold start (imports are CPU-bound).
#   timeout  send_email 120s: uploading a 35 MB message plus Gmail's capped retries must finish, or
#              the idempotency record stays "running" (409 to retries) until it expires.
#              list_emails/token_status 60s: a few batch requests. refresh_tokens 540s: the
#              scheduled run refreshes every token near expiry one after another.
# Connections: every in-flight request holds at most one database connection (shared/ opens one per
# request or pools at most as many as the instance's concurrency), so a function can hold
# max-instances x concurrency connections. The --db-connections budget is split:
#   refresh_tokens  a quarter (at least 2) = 2 instances x concurrency 1. The scheduled run is one
#                   long request whose REFRESH_CONCURRENCY workers each hold a connection: it gets the
#                   share less one; the one left serves a per-user refresh on the second instance.
#   the rest        send_email 2/5, list_emails 2/5, token_status what remains (>= 1/5).
# Each share is then cut into instances x concurrency with the concurrency between half of the
# function's ceiling (send/list 4, token_status 8) and the ceiling, choosing the pair that uses most of
# the share (ties: fewer instances); a share below half the ceiling becomes 1 instance x share.
# The split is over all four functions even with --only, since the others keep their connections.
spec() {
    case "$1" in
        send_email) MEMORY=1Gi TIMEOUT=120s CONC_MAX=4 ;;
        list_emails) MEMORY=1Gi TIMEOUT=60s CONC_MAX=4 ;;
        token_status) MEMORY=512Mi TIMEOUT=60s CONC_MAX=8 ;;
        refresh_tokens) MEMORY=512Mi TIMEOUT=540s CONC_MAX=1 ;;
    esac
    CPU=1
}

REFRESH_SHARE=$((DB_CONNECTIONS / 4))
[ "$REFRESH_SHARE" -ge 2 ] || REFRESH_SHARE=2
readonly REFRESH_SHARE
readonly MIN_CONNECTIONS=$((REFRESH_SHARE + 3))
if [ "$DB_CONNECTIONS" -lt "$MIN_CONNECTIONS" ]; then
    die "--db-connections $DB_CONNECTIONS is too small: the four functions need at least $MIN_CONNECTIONS" \
        "(refresh_tokens $REFRESH_SHARE, one each for the other three); raise the database's budget"
fi

share_of() {
    local rest=$((DB_CONNECTIONS - REFRESH_SHARE))
    case "$1" in
        refresh_tokens) echo "$REFRESH_SHARE" ;;
        send_email | list_emails) echo $((rest * 2 / 5)) ;;
        token_status) echo $((rest - 2 * (rest * 2 / 5))) ;;
    esac
}

# Sets INSTANCES and CONCURRENCY for target $1.
plan() {
    local share c best=0
    spec "$1"
    share="$(share_of "$1")"
    if [ "$1" = refresh_tokens ]; then
        INSTANCES=2 CONCURRENCY=1
        return
    fi
    if [ "$share" -lt $(((CONC_MAX + 1) / 2)) ]; then
        INSTANCES=1 CONCURRENCY="$share"
        return
    fi
    for ((c = CONC_MAX; c >= (CONC_MAX + 1) / 2; c--)); do
        if [ $((share / c * c)) -gt "$best" ]; then
            best=$((share / c * c)) INSTANCES=$((share / c)) CONCURRENCY=$c
        fi
    done
}

total=0
for t in $ALL_TARGETS; do
    plan "$t"
    used=$((INSTANCES * CONCURRENCY))
    [ "$t" != refresh_tokens ] || used=$REFRESH_SHARE
    total=$((total + used))
    log "$t: $MEMORY, $TIMEOUT, max-instances $INSTANCES x concurrency $CONCURRENCY" \
        "= $used connections (share $(share_of "$t"))"
done
[ "$total" -le "$DB_CONNECTIONS" ] || die "bug: the plan uses $total connections, over $DB_CONNECTIONS"
log "database connections: at most $total of $DB_CONNECTIONS"

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

member() { case "$1" in *:*) printf '%s' "$1" ;; *) printf 'serviceAccount:%s' "$1" ;; esac }

G=(gcloud --project "$PROJECT" --quiet)

# ---------------------------------------------------------------------------------------------------
# 1. APIs
read -r -a apis <<<"$(echo "$APIS" | tr '\n' ' ')"
[ -z "$CLOUDSQL_INSTANCE" ] || apis+=(sqladmin.googleapis.com)
log "enabling APIs"
run "${G[@]}" services enable "${apis[@]}"

# 2. Runtime service account (and the scheduler's).
ensure_sa() {
    local name="$1" email="$2" display="$3"
    case "$name" in
        *@*)
            log "using the existing service account $email"
            return
            ;;
    esac
    # shellcheck disable=SC2034  # read through create_unless_exists's eval
    local -a d=("${G[@]}" iam service-accounts describe "$email" --format "value(email)")
    # shellcheck disable=SC2034  # likewise
    local -a c=("${G[@]}" iam service-accounts create "$name" --display-name "$display")
    create_unless_exists d c
}
ensure_sa "$SERVICE_ACCOUNT" "$SA_EMAIL" "skill-email functions"

# 3. Secret access: the one DB URL secret (and the token key secret when set), never project-wide.
for ref in "$DB_URL_SECRET" "$TOKEN_KEY_SECRET"; do
    [ -n "$ref" ] || continue
    read -r s_name s_project _ <<<"$(split_secret "$ref")"
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
    [ -n "$DB_URL_SECRET" ] || die "--migrate needs DB_URL_SECRET in $ENV_FILE"
    read -r s_name s_project s_version <<<"$(split_secret "$DB_URL_SECRET")"
    python_bin="${PYTHON:-}"
    if [ -z "$python_bin" ]; then
        if [ -x .venv/bin/python ]; then python_bin=.venv/bin/python; else python_bin=python3; fi
    fi
    access=(gcloud --project "$s_project" --quiet secrets versions access "$s_version" --secret "$s_name")
    if [ "$DRY_RUN" -eq 1 ]; then
        # shellcheck disable=SC2016  # $(...) is printed for the reader's shell: the URL stays unprinted.
        printf 'DATABASE_URL="$(%s)" %s -m shared.cli migrate\n' "$(quote "${access[@]}")" "$(quote "$python_bin")"
    else
        log "+ DATABASE_URL=\"\$($(quote "${access[@]}"))\" $python_bin -m shared.cli migrate"
        db_url="$("${access[@]}")" || die "could not read secret $s_name (version $s_version)"
        [ -n "$db_url" ] || die "secret $s_name is empty"
        DATABASE_URL="$db_url" "$python_bin" -m shared.cli migrate || die "migration failed"
        unset db_url
    fi
fi

# 6. The functions. --env-vars-file replaces all variables and excludes --set-env-vars, so each
# function gets a generated file: env.yaml plus THREADS (the framework's gunicorn threads, to match
# the concurrency, as Google advises for Python) and GOOGLE_CLOUD_PROJECT (not set by the python312
# runtime; shared/config needs it to expand a bare secret name).
mkdir -p "$WORK_DIR"
write_env_file() {
    local out="$WORK_DIR/env.$1.yaml"
    {
        printf '# Generated by deploy.sh from %s: do not edit, edit %s.\n' "$ENV_FILE" "$ENV_FILE"
        cat "$ENV_FILE"
        printf '\n# Added by deploy.sh for %s:\n' "$1"
        printf 'THREADS: "%s"\n' "$CONCURRENCY"
        if [ "$1" = refresh_tokens ]; then
            printf 'REFRESH_CONCURRENCY: "%s"\n' "$((REFRESH_SHARE - 1))"
        fi
        grep -qE '^GOOGLE_CLOUD_PROJECT:' "$ENV_FILE" || printf 'GOOGLE_CLOUD_PROJECT: "%s"\n' "$PROJECT"
    } >"$out"
    printf '%s' "$out"
}

for t in "${TARGETS[@]}"; do
    plan "$t"
    env_file="$(write_env_file "$t")"
    log "deploying $t"
    run "${G[@]}" functions deploy "$t" --gen2 --runtime "$RUNTIME" --region "$REGION" --source . \
        --entry-point "$t" --trigger-http --no-allow-unauthenticated --env-vars-file "$env_file" \
        --service-account "$SA_EMAIL" --memory "$MEMORY" --cpu "$CPU" --timeout "$TIMEOUT" \
        --max-instances "$INSTANCES" --concurrency "$CONCURRENCY"

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

    for who in ${INVOKERS[@]+"${INVOKERS[@]}"}; do
        # For 2nd gen this binds roles/run.invoker on the function's Cloud Run service.
        run "${G[@]}" functions add-invoker-policy-binding "$t" --region "$REGION" --member "$(member "$who")"
    done
done

# 7. Cloud Scheduler: POST {} to refresh_tokens every few minutes with a Google-signed OIDC token.
if [ "$SCHEDULER" -eq 1 ] && deploying refresh_tokens; then
    ensure_sa "$SCHEDULER_SA" "$SCHEDULER_SA_EMAIL" "skill-email scheduler (calls refresh_tokens)"
    run "${G[@]}" functions add-invoker-policy-binding refresh_tokens --region "$REGION" \
        --member "serviceAccount:$SCHEDULER_SA_EMAIL"
    capture REFRESH_TOKENS_URL "${G[@]}" functions describe refresh_tokens --gen2 --region "$REGION" \
        --format "value(serviceConfig.uri)"
    # attempt-deadline 600s: above the function's 540s timeout, so the job records the function's
    # own answer instead of cancelling a run that is still working.
    common=(--location "$REGION" --schedule "$SCHEDULE" --time-zone Etc/UTC --uri "$REFRESH_TOKENS_URL"
        --http-method POST --message-body "{}" --oidc-service-account-email "$SCHEDULER_SA_EMAIL"
        --oidc-token-audience "$REFRESH_TOKENS_URL" --attempt-deadline 600s
        --description "skill-email: refresh Gmail tokens close to expiry")
    describe=("${G[@]}" scheduler jobs describe "$SCHEDULER_JOB" --location "$REGION" --format "value(name)")
    update=("${G[@]}" scheduler jobs update http "$SCHEDULER_JOB" "${common[@]}"
        --update-headers Content-Type=application/json)
    create=("${G[@]}" scheduler jobs create http "$SCHEDULER_JOB" "${common[@]}"
        --headers Content-Type=application/json)
    if [ "$DRY_RUN" -eq 1 ]; then
        printf 'if %s; then %s; else %s; fi\n' "$(quote "${describe[@]}")" "$(quote "${update[@]}")" \
            "$(quote "${create[@]}")"
    elif exists "${describe[@]}"; then
        run "${update[@]}"
    else
        run "${create[@]}"
    fi
fi

if [ "$DRY_RUN" -eq 1 ]; then log "dry run: nothing was changed"; else log "done"; fi
