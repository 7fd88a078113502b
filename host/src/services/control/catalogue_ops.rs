//! The catalogue operations (`publish`, `unpublish`, `published`), served by the fleet's
//! [`Catalogue`](crate::services::catalogue::Catalogue) on its own runtime, or refused in
//! one line when the host has no fleet database.

use std::sync::Arc;

use super::protocol::{Op, Request, Response};
use super::server::Shared;
use crate::services::catalogue::CatalogueError;
use crate::types::call::CallError;

/// Serves a catalogue operation.
pub(super) async fn catalogue_op(shared: &Arc<Shared>, request: Request) -> Response {
    let Some(catalogue) = shared.catalogue.get() else {
        return Response::error(CatalogueError::NoDatabase.into());
    };
    let answer: Result<Response, CallError> = match request.op {
        Op::Publish => match request.publish {
            Some(publish) => catalogue
                .publish(
                    publish.path,
                    publish.name,
                    publish.canary,
                    publish.publisher,
                )
                .await
                .map(|plugin| Response {
                    message: Some(format!(
                        "published {} {} ({} bytes, sha256 {}){}",
                        plugin.name,
                        plugin.version,
                        plugin.size,
                        plugin.sha256,
                        if plugin.canaries.is_empty() {
                            ": every host loads it".to_owned()
                        } else {
                            format!(
                                ": canaries {} load it first, the others once they passed \
                                 probation",
                                plugin.canaries.join(", ")
                            )
                        }
                    )),
                    published: Some(vec![plugin]),
                    ..Response::new()
                })
                .map_err(Into::into),
            None => Err(CatalogueError::BadName("a publish needs a file".into()).into()),
        },
        Op::Unpublish => {
            let name = request.plugin.unwrap_or_default();
            catalogue
                .unpublish(name.clone())
                .await
                .map(|()| Response {
                    message: Some(format!("unpublished {name}: every host removes it")),
                    ..Response::new()
                })
                .map_err(Into::into)
        }
        _ => catalogue
            .published()
            .await
            .map(|published| Response {
                published: Some(published),
                ..Response::new()
            })
            .map_err(Into::into),
    };
    answer.unwrap_or_else(Response::error)
}
