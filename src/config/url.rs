//! NATS URLs as the operator writes them: credentials in the userinfo are taken out, so
//! that the URL can be logged.

/// Credentials found in the userinfo of `--nats-url`.
#[derive(Default)]
pub(super) struct UrlAuth {
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) token: Option<String>,
}

/// Takes `user:password@` or `token@` out of each comma-separated NATS URL (async-nats
/// ignores userinfo, and `nats_url` is logged and quoted in errors). The URLs keep scheme,
/// host and port; the (percent-decoded) credentials fill the [`super::NatsAuth`] fields that no
/// flag or variable set.
pub(super) fn split_url_credentials(list: &str) -> Result<(String, UrlAuth), String> {
    let mut auth = UrlAuth::default();
    let mut urls = Vec::new();
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, url),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (userinfo, host) = match rest[..end].rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, &rest[..end]),
        };
        match userinfo.map(|u| u.split_once(':')) {
            None => {}
            Some(Some((user, password))) => {
                auth.user.get_or_insert_with(|| percent_decode(user));
                auth.password
                    .get_or_insert_with(|| percent_decode(password));
            }
            Some(None) => {
                auth.token
                    .get_or_insert_with(|| percent_decode(userinfo.unwrap_or_default()));
            }
        }
        let tail = &rest[end..];
        urls.push(match scheme {
            Some(s) => format!("{s}://{host}{tail}"),
            None => format!("{host}{tail}"),
        });
    }
    if urls.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok((urls.join(","), auth))
}

/// `%40` → `@` (userinfo is percent-encoded in a URL); anything else is kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
