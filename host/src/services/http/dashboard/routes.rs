//! The dashboard's routes: `/` (the page) and `/assets/{file}`, with their content type, a
//! strict Content-Security-Policy, and revalidated caching (`no-cache` + a strong `ETag`,
//! so an upgraded host is seen at once and an unchanged file costs a 304).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::embedded::{self, Asset};

/// Only the host's own files: no inline script or style, no other origin, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the HTTP server's router. They need no token:
/// they serve the same files to everyone, and the page asks for the token itself.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    match embedded::find("index.html") {
        Some(page) => serve(page, &headers),
        None => not_found("index.html"),
    }
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match embedded::find(&file) {
        Some(found) if found.name != "index.html" => serve(found, &headers),
        _ => not_found(&file),
    }
}

/// The file, or 304 when the browser's copy (`If-None-Match`) is current.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == asset.etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.body.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(headers);
    response
}

fn not_found(file: &str) -> Response {
    let body = serde_json::json!({
        "error": {"kind": "not_found", "message": format!("the dashboard has no file named {file}")}
    });
    let mut response = (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    security_headers(response.headers_mut());
    response
}

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}
