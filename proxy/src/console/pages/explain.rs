//! "Why was this blocked?": the decision the proxy would make for a device
//! (or none), the user signed in on it (or none: the device-only rules)
//! with their groups, a client address, a URL and a method, computed by
//! the same function as the data path (`crate::explain`), shown in
//! Japanese. Every record's detail view links here with its fields (the
//! signed-in user and groups too) filled in.

use http::{Response, StatusCode};

use super::Ctx;
use crate::console::respond::Body;

const MAX_URL_CHARS: usize = 4096;

pub fn page(ctx: &Ctx) -> Response<Body> {
    let q = &ctx.query;
    let clean = |name: &str, max: usize| -> String {
        q.get(name)
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(max)
            .collect()
    };
    let f = serde_json::json!({
        "device": clean("device", 256), "user": clean("user", 256),
        "user_groups": clean("user_groups", 4096), "from": clean("from", 64),
        "url": clean("url", MAX_URL_CHARS), "method": clean("method", 16),
    });
    let (Some(from), Some(url)) = (q.get("from"), q.get("url")) else {
        // The empty form; a half-filled one says what is missing.
        let error = (q.get("from").is_some() || q.get("url").is_some())
            .then(|| ctx.fill("err_explain_input", &[]));
        return ctx.page("explain.html", serde_json::json!({"f": f, "error": error}));
    };
    let fail = |e: String| {
        ctx.page_with_status(
            StatusCode::BAD_REQUEST,
            "explain.html",
            serde_json::json!({"f": f, "error": e}),
        )
    };
    if url.chars().count() > MAX_URL_CHARS || from.chars().count() > 64 {
        return fail(ctx.fill(
            "err_field",
            &[("field", "URL"), ("max", &MAX_URL_CHARS.to_string())],
        ));
    }
    let generation = ctx.gw.current();
    let runtime = &generation.runtime;
    if runtime.builtin {
        return fail(ctx.fill("err_explain_builtin", &[]));
    }
    let method = q.get("method").unwrap_or("GET");
    let user = crate::explain::SignedIn::from_text(
        q.get("user").unwrap_or(""),
        q.get("user_groups").unwrap_or(""),
    );
    // An empty device field is no device, as an empty user field is no user.
    let device = q.get("device").filter(|d| !d.trim().is_empty());
    let decision =
        match crate::explain::explain_as(&runtime.policy, device, user.as_ref(), from, url, method)
        {
            Ok(d) => d,
            Err(e) => return fail(ctx.fill("err_explain", &[("detail", &e.to_string())])),
        };
    let who = match (&decision.user, decision.signed_in) {
        (Some(u), true) => format!("{u}{}", ctx.fill("signed_in_mark", &[])),
        (Some(u), false) => format!("{u} / {}", ctx.fill("not_signed_in", &[])),
        (None, _) => ctx.fill("not_signed_in", &[]),
    };
    let d = serde_json::json!({
        "action": decision.action.to_string(),
        "request": decision.request,
        "location": location_text(ctx, &decision.location),
        "device": decision.device.clone().unwrap_or_default(),
        "user": who,
        "signed_in": decision.signed_in,
        "user_groups": decision.user_groups.join(", "),
        "groups": decision.groups.join(", "),
        "policy": decision.policy.clone().unwrap_or_default(),
        "categories": decision.categories.join(", "),
        "app": decision.app.clone().unwrap_or_default(),
        "rule": decision.rule,
        "rule_origin": decision.rule_origin,
        "message": decision.message.clone().unwrap_or_default(),
    });
    ctx.page(
        "explain.html",
        serde_json::json!({"f": f, "d": d, "generation": runtime.generation}),
    )
}

fn location_text(ctx: &Ctx, l: &komugate_policy::Location) -> String {
    use crate::console::text::Lang;
    match (l, ctx.lang) {
        (komugate_policy::Location::Site(s), Lang::Ja) => format!("拠点「{s}」"),
        (komugate_policy::Location::Offsite, Lang::Ja) => "拠点外（自宅・出張先など）".into(),
        (l, Lang::En) => l.to_string(),
    }
}
