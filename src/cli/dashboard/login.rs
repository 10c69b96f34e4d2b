//! Sign-in with the token for browsers (which cannot send `Authorization` with an event stream):
//! `/login` is a page that POSTs the token once; the answer sets a session cookie holding a random
//! per-process value, never the token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::api::{Shared, asset, error, same};

const PAGE: &str = include_str!("assets/login.html");
pub const SCRIPT: &str = include_str!("assets/login.js");

/// The session cookie's name.
pub const COOKIE: &str = "rollgate-session";

/// Paths served without authentication: the sign-in page and what it loads.
pub fn open(path: &str) -> bool {
    matches!(path, "/login" | "/login.js" | "/style.css")
}

/// Whether the request carries this process's session cookie.
pub fn has_session(headers: &HeaderMap, session: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && same(value.as_bytes(), session.as_bytes()))
}

pub async fn page(State(shared): State<Arc<Shared>>) -> Response {
    asset(
        "text/html; charset=utf-8",
        PAGE.replace("{{CSRF}}", shared.csrf()),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /login {"token": ...}`: the session cookie for the right token, else a 401.
pub async fn sign_in(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(token) = shared.token() else {
        return error(
            StatusCode::NOT_FOUND,
            "this dashboard takes no token: use a client certificate of its CA",
        );
    };
    let Ok(sent) = serde_json::from_slice::<SignIn>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the request body: expected {\"token\": \"...\"}",
        );
    };
    if !same(sent.token.as_bytes(), token.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "wrong token");
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict",
        shared.session()
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
