#!/usr/bin/env bash
# azd post-provision hook: build the scoring image in the registry (no local Docker needed).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${AZURE_CONTAINER_REGISTRY_NAME:?run through azd, which sets it from the Bicep outputs}"
: "${SCORING_IMAGE:?run through azd}"
# The subscription azd deployed to: `az` may default to another one (az account show).
: "${AZURE_SUBSCRIPTION_ID:?run through azd, which sets it for the environment}"
image="${SCORING_IMAGE#*/}"   # repository:tag within the registry
az acr build --subscription "$AZURE_SUBSCRIPTION_ID" --registry "$AZURE_CONTAINER_REGISTRY_NAME" \
  --image "$image" --file scoring_container/Dockerfile .
echo "built $SCORING_IMAGE"
