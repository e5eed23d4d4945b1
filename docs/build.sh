#!/usr/bin/env bash
# Builds the Japanese manuals and system documents into target/docs/:
#   教職員向け操作マニュアル, システム担当者向け操作マニュアル and the one-page
#   研修用クイックリファレンス as PDF (pandoc → HTML → weasyprint), and the
#   settings document (設定書) of examples/policy.toml as xlsx, HTML and PDF.
#
# Usage: docs/build.sh [--screenshots] [--out DIR]
#   --screenshots  first regenerate docs/ja/images/*.png (the test
#                  tests/docs_screenshots.rs starts a gateway, sends real
#                  traffic and drives headless chromium through the pages)
#                  and docs/ja/overview.svg (graphviz); commit the result.
#
# Needs the Debian packages pandoc, weasyprint, fonts-noto-cjk and
# poppler-utils (and chromium, chromium-driver, libnss3-tools, graphviz for
# --screenshots).
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/docs
screenshots=false
while [ $# -gt 0 ]; do
  case "$1" in
    --screenshots) screenshots=true ;;
    --out) out="$2"; shift ;;
    *) echo "docs/build.sh: unknown argument $1 (use --screenshots, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

for tool in pandoc weasyprint pdfinfo pdffonts; do
  command -v "$tool" >/dev/null 2>&1 || { echo "docs/build.sh: $tool is missing: apt-get install pandoc weasyprint fonts-noto-cjk poppler-utils" >&2; exit 1; }
done
fc-list | grep "Noto Sans CJK JP" >/dev/null || { echo "docs/build.sh: the Noto CJK fonts are missing (Japanese would not render): apt-get install fonts-noto-cjk" >&2; exit 1; }

if $screenshots; then
  command -v dot >/dev/null 2>&1 || { echo "docs/build.sh: graphviz is missing: apt-get install graphviz" >&2; exit 1; }
  dot -Tsvg docs/ja/overview.dot -o docs/ja/overview.svg
  KOMUGATE_DOCS_IMAGES="$PWD/docs/ja/images" cargo test -q -p komugate-tests --test docs_screenshots
fi

mkdir -p "$out"
ja=docs/ja
# Markdown → standalone HTML linking the print stylesheets (so pandoc adds
# no style of its own) → PDF, resolved against docs/ja/ (images, diagram, CSS).
# Arguments: manual file, PDF name, then pandoc options.
build_pdf() {
  local src=$1 name=$2
  shift 2
  local html="$out/$name.html"
  pandoc "$ja/$src" --from markdown --to html5 --standalone --css print.css "$@" \
    --metadata toc-title="目次" --output "$html"
  weasyprint --quiet -u "$ja/" "$html" "$out/$name.pdf"
  check_pdf "$out/$name.pdf"
}
# The Japanese font is embedded and every font is (no tofu, no missing glyph source).
check_pdf() {
  pdffonts "$1" | grep "Noto-Sans-CJK-JP" >/dev/null || { echo "docs/build.sh: $1 has no Noto Sans CJK JP font: Japanese would not render" >&2; exit 1; }
  echo "wrote $1 ($(pages "$1") pages)"
}
pages() { pdfinfo "$1" | sed -n 's/^Pages: *//p'; }

build_pdf teacher-manual.md 教職員向け操作マニュアル --toc
build_pdf staff-manual.md システム担当者向け操作マニュアル --toc
build_pdf quick-reference.md 研修用クイックリファレンス --css quick.css
n=$(pages "$out/研修用クイックリファレンス.pdf")
[ "$n" = 1 ] || { echo "docs/build.sh: the quick reference must fit on one page (it has $n)" >&2; exit 1; }

# The settings document of the example board, generated from the policy.
komugate=(cargo run -q -p komugate --)
"${komugate[@]}" policy document examples/policy.toml --out "$out/設定書.xlsx"
"${komugate[@]}" policy document examples/policy.toml --out "$out/設定書.html"
weasyprint --quiet -s "$ja/print.css" -s "$ja/landscape.css" "$out/設定書.html" "$out/設定書.pdf"
check_pdf "$out/設定書.pdf"
