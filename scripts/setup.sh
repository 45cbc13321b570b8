#!/usr/bin/env bash
# Sets up everything the tests, lint and type checks need; idempotent. Builds on
# scripts/setup-serve.sh (the same .venv), so a checkout first set up for serving gets the
# rest here.
#   Debian: orthanc (the test PACS) and orthanc-dicomweb (DICOMweb for OHIF), orthanc-python
#           (the test vendor of an external algorithm, tests/router/external), dcmtk (reference
#           SCU/SCP), dicom3tools (dciodvfy),
#           chromium + chromium-driver (the headless browser the worklist page test drives),
#           libpixelmed-java (PixelMed's DicomSRValidator: TID 1500 / TID 2010 templates),
#           rsyslog + rsyslog-gnutls + openssl (a throwaway audit collector, TCP and TLS).
#           prometheus (its promtool checks the shipped alert rules, deploy/prometheus),
#           postgresql (the tests start throwaway clusters with initdb/pg_ctl: testing/postgres.py).
#   Python: radrouter's dev extras (pytest, ruff, mypy, selenium, ... and the train extra),
#           with torch==2.13.0 installed first, so nothing pulls a CUDA build.
#   npm registry: OHIF's prebuilt viewer (@ohif/app, pinned, integrity-checked) under .cache/,
#           for tests/viewers (testing/ohif.py).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/Orthanc ] || [ -x /usr/bin/Orthanc ] || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)  # OHIF's source
[ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || need_apt+=(orthanc-python)  # the test vendor
[ -x /usr/bin/storescu ] || need_apt+=(dcmtk)
[ -x /usr/bin/dciodvfy ] || need_apt+=(dicom3tools)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
[ -e /usr/share/java/pixelmed.jar ] || need_apt+=(libpixelmed-java)
[ -x /usr/bin/java ] || need_apt+=(default-jre-headless)  # libpixelmed-java does not pull one
[ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)  # the audit collector of tests/router/audit
compgen -G "/usr/lib/*/rsyslog/lmnsd_gtls.so" >/dev/null || need_apt+=(rsyslog-gnutls)  # its TLS
[ -x /usr/bin/openssl ] || need_apt+=(openssl)  # the collector's test certificates
[ -x /usr/bin/promtool ] || need_apt+=(prometheus)  # promtool check rules (deploy/prometheus)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)  # tests' own cluster
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # The Debian package may start a system Orthanc; tests start their own on free ports.
fi

scripts/setup-serve.sh

stamp=.venv/.radrouter-dev
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing the dev extras (torch==2.13.0 CPU build first)"
    # torch first and pinned, so nothing pulls a CUDA build from the index.
    .venv/bin/pip install -q "torch==2.13.0"
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi

.venv/bin/python -m testing.ohif fetch  # once; a no-op when it is there
