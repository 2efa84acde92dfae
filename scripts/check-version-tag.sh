#!/usr/bin/env bash
# check-version-tag.sh v0.1.0: fails unless the tag is "v" + src/cymqtt/_version.py's version,
# the one version source (setuptools reads it through pyproject.toml's dynamic version).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:?usage: $0 TAG}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/cymqtt/_version.py)
if [ "$tag" != "v$version" ]; then
  echo "check-version-tag: tag $tag does not name version $version (src/cymqtt/_version.py)" >&2
  exit 1
fi
echo "check-version-tag: $tag = version $version"
