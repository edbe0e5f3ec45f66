#!/usr/bin/env bash
# Deploys skill-email's targets as 2nd-gen Cloud Functions (Cloud Run functions), with their service
# accounts, secret access, optional Cloud SQL connection, per-function invokers, the Pub/Sub topic of
# Gmail's notifications, and the Cloud Scheduler job and Cloud Tasks queue of refresh_tokens. Every step
# is create-or-update, so running it again is safe. Operator notes: docs/deploy.md. Usage: --help
#
# This file is the list of gcloud steps. What to deploy and how (the options, env.yaml, the targets of
# shared/targets.py, the budgets) is decided by devtools/deploy_plan.py, which hands the steps their
# values as tab-separated records. Written for bash 3.2 too (macOS): no associative arrays, no mapfile.
# shellcheck disable=SC2034  # the arrays handed to ensure() by name are read through its eval
set -euo pipefail

PROG="${0##*/}"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2 && exit 1; }

cd "$(dirname "$0")" # the source tree: "--source ." and the relative paths below mean it
[ -f main.py ] || die "main.py not found next to $PROG: run it from the skill-email source tree"

# The planner's interpreter (and the migration's): $PYTHON, else the project's .venv, which tasks.py
# creates with PyYAML and the rest of requirements-dev.txt when it is missing (Python 3.11+ needed).
PY="${PYTHON:-.venv/bin/python}"
if [ -z "${PYTHON:-}" ] && [ ! -x .venv/bin/python ]; then
    log "no .venv yet: creating it with python3 tasks.py venv"
    python3 tasks.py venv >&2 || die "could not create .venv (Python 3.11+ needed): see docs/deploy.md"
fi
for arg in "$@"; do case "$arg" in -h | --help) exec "$PY" -m devtools.deploy_plan --help ;; esac; done

# The plan: "var NAME VALUE" sets a shell variable; other records are read by the steps below.
PLAN="$("$PY" -m devtools.deploy_plan "$@")" || exit $?
FUNCTIONS=() INVOKERS=() SECRETS=() APIS=() ACCOUNTS=() SQL_MEMBERS=()
while IFS= read -r record; do
    IFS=$'\t' read -r kind rest <<<"$record"
    case "$kind" in
        var)
            IFS=$'\t' read -r _ name value <<<"$record"
            [[ "$name" =~ ^[A-Z_]+$ ]] || die "bad plan record: $record"
            printf -v "$name" '%s' "$value"
            ;;
        api) APIS+=("$rest") ;;
        sa) ACCOUNTS+=("$rest") ;;
        secret) SECRETS+=("$rest") ;;
        sql) SQL_MEMBERS+=("$rest") ;;
        function) FUNCTIONS+=("$rest") ;;
        invoker) INVOKERS+=("$rest") ;;
        *) die "bad plan record: $record" ;;
    esac
done <<<"$PLAN"

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
    if [ "$DRY_RUN" -eq 1 ]; then printf '%s\n' "$(quote "$@")"; else log "+ $(quote "$@")" && "$@"; fi
}

# ensure DESCRIBE UPDATE CREATE: three commands given as arrays by name (not d, u or c, the locals
# here). Runs UPDATE if DESCRIBE succeeds, else CREATE; an UPDATE of "" keeps what exists.
ensure() {
    local -a d u=() c
    eval "d=(\"\${$1[@]}\")"
    [ -z "$2" ] || eval "u=(\"\${$2[@]}\")"
    eval "c=(\"\${$3[@]}\")"
    if [ "$DRY_RUN" -eq 1 ] && [ -z "$2" ]; then
        printf '%s || %s\n' "$(quote "${d[@]}")" "$(quote "${c[@]}")"
    elif [ "$DRY_RUN" -eq 1 ]; then
        printf 'if %s; then %s; else %s; fi\n' "$(quote "${d[@]}")" "$(quote "${u[@]}")" "$(quote "${c[@]}")"
    elif ! "${d[@]}" >/dev/null 2>&1; then
        run "${c[@]}"
    elif [ -n "$2" ]; then
        run "${u[@]}"
    else
        log "exists: $(quote "${d[@]:0:5}")"
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

# 1. APIs
log "enabling APIs"
run "${G[@]}" services enable "${APIS[@]}"

# 2. Runtime service accounts (and, in step 8, the scheduler's). NAME empty or -: an existing account.
ensure_sa() {
    local name="$1" email="$2" display="$3"
    if [ -z "$name" ] || [ "$name" = - ]; then log "using the existing service account $email" && return; fi
    local -a sa_d=("${G[@]}" iam service-accounts describe "$email" --format "value(email)")
    local -a sa_c=("${G[@]}" iam service-accounts create "$name" --display-name "$display")
    ensure sa_d "" sa_c
}
for account in "${ACCOUNTS[@]}"; do
    IFS=$'\t' read -r a_name a_email a_display <<<"$account"
    ensure_sa "$a_name" "$a_email" "$a_display"
done

# 3. Secret access: the DB URL secret (and the token key secret when set), never project-wide.
for secret in ${SECRETS[@]+"${SECRETS[@]}"}; do
    IFS=$'\t' read -r s_name s_project s_member <<<"$secret"
    run gcloud --project "$s_project" --quiet secrets add-iam-policy-binding "$s_name" \
        --member "$s_member" --role roles/secretmanager.secretAccessor --condition None
done

# 4. Cloud SQL: roles/cloudsql.client can only be granted on the instance's project.
for sql_member in ${SQL_MEMBERS[@]+"${SQL_MEMBERS[@]}"}; do
    run gcloud --project "${CLOUDSQL_INSTANCE%:*:*}" --quiet projects add-iam-policy-binding \
        "${CLOUDSQL_INSTANCE%:*:*}" --member "$sql_member" --role roles/cloudsql.client --condition None
done

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

# 6. Gmail's topic (once a Pub/Sub target is registered): Gmail's own account may publish to it, and
# what the function fails on too often goes to a dead-letter topic, kept 7 days by its subscription.
if [ -n "$TOPIC" ]; then
    capture PROJECT_NUMBER "${G[@]}" projects describe "$PROJECT" --format "value(projectNumber)"
    PUBSUB_AGENT="serviceAccount:service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
    for topic in "$TOPIC" "$DEAD_LETTER_TOPIC"; do
        t_d=("${G[@]}" pubsub topics describe "$topic" --format "value(name)")
        t_c=("${G[@]}" pubsub topics create "$topic")
        ensure t_d "" t_c
    done
    run "${G[@]}" pubsub topics add-iam-policy-binding "$TOPIC" \
        --member serviceAccount:gmail-api-push@system.gserviceaccount.com --role roles/pubsub.publisher
    s_d=("${G[@]}" pubsub subscriptions describe "$DEAD_LETTER_TOPIC" --format "value(name)")
    s_c=("${G[@]}" pubsub subscriptions create "$DEAD_LETTER_TOPIC" --topic "$DEAD_LETTER_TOPIC"
        --message-retention-duration 7d)
    ensure s_d "" s_c
    run "${G[@]}" pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" --member "$PUBSUB_AGENT" \
        --role roles/pubsub.publisher
fi

# 7. The functions, each with its generated env file: env.yaml plus what the plan adds (docs/deploy.md).
# --env-vars-file replaces all variables, so nothing else sets any.
for fn in ${FUNCTIONS[@]+"${FUNCTIONS[@]}"}; do
    IFS=$'\t' read -r t trigger sa memory cpu timeout instances concurrency env_file ingress <<<"$fn"
    # A Pub/Sub target: Eventarc pushes the topic's messages as its own account, redelivering on failure.
    trigger_flags=(--trigger-http --no-allow-unauthenticated)
    [ "$trigger" = http ] || trigger_flags=(--trigger-topic "$TOPIC" --trigger-service-account "$sa" --retry)
    log "deploying $t"
    run "${G[@]}" functions deploy "$t" --gen2 --runtime "$RUNTIME" --region "$REGION" --source . \
        --entry-point "$t" "${trigger_flags[@]}" --env-vars-file "$env_file" \
        --service-account "$sa" --memory "$memory" --cpu "$cpu" --timeout "$timeout" \
        --max-instances "$instances" --concurrency "$concurrency" --ingress-settings "$ingress"

    if [ "$trigger" = pubsub ]; then
        # The trigger's subscription (made by Eventarc) gets the dead-letter topic; Pub/Sub's own agent
        # must be able to take messages from it and publish them there.
        capture EVENT_TRIGGER "${G[@]}" functions describe "$t" --gen2 --region "$REGION" \
            --format "value(eventTrigger.trigger)"
        capture SUBSCRIPTION "${G[@]}" eventarc triggers describe "$EVENT_TRIGGER" --location "$REGION" \
            --format "value(transport.pubsub.subscription)"
        run "${G[@]}" pubsub subscriptions update "$SUBSCRIPTION" --dead-letter-topic "$DEAD_LETTER_TOPIC" \
            --max-delivery-attempts "$MAX_DELIVERY_ATTEMPTS"
        run "${G[@]}" pubsub subscriptions add-iam-policy-binding "$SUBSCRIPTION" --member "$PUBSUB_AGENT" \
            --role roles/pubsub.subscriber
    fi

    if [ -n "$CLOUDSQL_INSTANCE" ]; then
        # "functions deploy" has no Cloud SQL flag: the socket is set on the function's Cloud Run service,
        # after every deploy (which may reset it); "add" keeps connections someone else configured.
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

# 8. Cloud Scheduler: POST {} to the scheduled target every few minutes with a Google-signed OIDC token
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
    job_d=("${G[@]}" scheduler jobs describe "$SCHEDULER_JOB" --location "$REGION" --format "value(name)")
    job_u=("${G[@]}" scheduler jobs update http "$SCHEDULER_JOB" "${common[@]}"
        --update-headers Content-Type=application/json)
    job_c=("${G[@]}" scheduler jobs create http "$SCHEDULER_JOB" "${common[@]}"
        --headers Content-Type=application/json)
    ensure job_d job_u job_c

    # The queue the scheduled run fans out over, its rates from the plan (docs/deploy.md). The run (as
    # the functions' account) queues tasks that call back as the scheduler: it must be allowed both.
    limits=(--location "$REGION" --max-dispatches-per-second "$QUEUE_RATE"
        --max-concurrent-dispatches "$QUEUE_CONCURRENT" --max-attempts 5 --min-backoff 10s --max-backoff 300s)
    q_d=("${G[@]}" tasks queues describe "$QUEUE" --location "$REGION" --format "value(name)")
    q_u=("${G[@]}" tasks queues update "$QUEUE" "${limits[@]}")
    q_c=("${G[@]}" tasks queues create "$QUEUE" "${limits[@]}")
    ensure q_d q_u q_c
    run "${G[@]}" tasks queues add-iam-policy-binding "$QUEUE" --location "$REGION" \
        --member "serviceAccount:$SA_EMAIL" --role roles/cloudtasks.enqueuer
    run "${G[@]}" iam service-accounts add-iam-policy-binding "$SCHEDULER_SA_EMAIL" \
        --member "serviceAccount:$SA_EMAIL" --role roles/iam.serviceAccountUser
fi

if [ "$DRY_RUN" -eq 1 ]; then log "dry run: nothing was changed"; else log "done"; fi
