//! The top of the document: `version`, `timezone`, `[contact]` and
//! `[defaults]`.

use toml_edit::TableLike;

use super::cx::Cx;
use crate::pattern::parse_offset;
use crate::{Action, Contact, TunnelMode};

/// What the top of the document sets.
pub(super) struct Header {
    pub tz_offset: i32,
    pub contact: Contact,
    pub default_action: Action,
    pub default_message: Option<String>,
    pub default_tunnel: Option<TunnelMode>,
}

pub(super) fn header(cx: &mut Cx<'_>, root: &dyn TableLike) -> Header {
    if let Some(item) = root.get("version") {
        if item.as_integer() != Some(1) {
            cx.err(
                &item.span(),
                "unsupported `version` (this komugate understands version = 1)",
            );
        }
    }
    let mut tz_offset = 9 * 3600;
    if let Some((tz, sp)) = cx.str(root, "timezone", "the policy document") {
        match parse_offset(&tz) {
            Ok(o) => tz_offset = o,
            Err(e) => cx.err(&sp, e),
        }
    }

    // [contact]
    let mut contact = Contact::default();
    if let Some((t, _)) = cx.table(root, "contact") {
        cx.keys(t, "[contact]", &["name", "phone", "email", "url"]);
        contact.name = cx.str(t, "name", "[contact]").map(|x| x.0);
        contact.phone = cx.str(t, "phone", "[contact]").map(|x| x.0);
        contact.email = cx.str(t, "email", "[contact]").map(|x| x.0);
        contact.url = cx.str(t, "url", "[contact]").map(|x| x.0);
    }

    // [defaults]
    let (mut default_action, mut default_message, mut default_tunnel) = (Action::Allow, None, None);
    if let Some((t, _)) = cx.table(root, "defaults") {
        cx.keys(t, "[defaults]", &["action", "message", "tunnel"]);
        if let Some(a) = cx.action(t, "action", "[defaults]") {
            default_action = a;
        }
        default_message = cx.str(t, "message", "[defaults]").map(|x| x.0);
        default_tunnel = cx.tunnel(t, "[defaults]");
    }
    Header {
        tz_offset,
        contact,
        default_action,
        default_message,
        default_tunnel,
    }
}
