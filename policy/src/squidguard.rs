pub fn import_squidguard(
    _conf_text: &str,
    _origin: &std::path::Path,
) -> Result<String, crate::PolicyErrors> {
    todo!()
}
