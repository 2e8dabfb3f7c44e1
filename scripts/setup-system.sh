#!/usr/bin/env bash
# System packages some tests and features use, from Debian: tesseract (OCR of burned-in text in DICOM
# pixels), chromium + chromedriver (the page's browser test), Orthanc with its DICOMweb plugin (the PACS the
# integration tests talk to; its service is not started — the tests start the binary with a config of
# their own inside a private network namespace) and dcmtk (a real DICOM SCU for the listener tests). Installs what is missing when run as root
# with apt-get; otherwise says what is missing and carries on (those tests then skip, saying why).
set -euo pipefail
wanted=(tesseract-ocr chromium chromium-driver orthanc orthanc-dicomweb dcmtk)
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "not installed (tests that need them will skip): ${missing[*]}" >&2
fi
