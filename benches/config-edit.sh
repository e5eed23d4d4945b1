# Sourced by the bench scripts: edits of the komugate config they generate
# from `komugate config default`.

# set_key FILE SECTION KEY VALUE: replace `KEY = ...` inside [SECTION]
# (VALUE is written as given: quote strings yourself).
set_key() {
  awk -v s="[$2]" -v k="$3" -v v="$4" '
    /^\[/ { cur=$0 }
    cur==s && $0 ~ "^"k" *=" { print k" = "v; next }
    { print }' "$1" >"$1.tmp" && mv "$1.tmp" "$1"
}
