//! The Templates page: every package of the server's KFP repositories (the template store under
//! `kfpRegistry`), its versions with their tags, the build that pushed each, and download links
//! through the KFP API (which the login cookie reads with, as the console does).

use maud::{Markup, html};

use super::{Visitor, layout, short, url_encode};
use crate::core::kfp::VERSION_PREFIX;
use crate::pipeline::service::Listing;

pub(in crate::edges::api::console) fn templates(visitor: &Visitor, listings: &[Listing]) -> Markup {
    let content = html! {
        p {
            "Pipeline templates, as Kubeflow's "
            code { "RegistryClient(host=\"http://THIS-SERVER/kfp/PROJECT/REPOSITORY\")" }
            " reads them: one package per pipeline name, a version per content digest, tags as "
            "builds and uploads set them."
        }
        @if listings.is_empty() { p.empty { "No templates yet." } }
        @for listing in listings {
            @let base = format!(
                "/kfp/{}/{}/{}",
                url_encode(&listing.project),
                url_encode(&listing.repository),
                url_encode(&listing.package)
            );
            h2 { (listing.project) "/" (listing.repository) ": " (listing.package) }
            table.templates {
                thead { tr { th { "Version" } th { "Tags" } th { "Created" } th { "Pushed by" } th { "File" } } }
                tbody {
                    @for version in listing.versions.iter().rev() {
                        @let hex = version.digest.trim_start_matches(VERSION_PREFIX);
                        tr {
                            td.digest {
                                a href={ (base) "/" (version.digest) } title=(version.digest) {
                                    (VERSION_PREFIX) (short(hex))
                                }
                            }
                            td {
                                @for tag in &version.tags {
                                    a.tag href={ (base) "/" (url_encode(tag)) } { (tag) } " "
                                }
                            }
                            td { (version.created.as_deref().unwrap_or("—")) }
                            td {
                                @if let Some(build) = &version.build {
                                    a href={ "/builds/" (url_encode(build)) } { "build " (short(build)) }
                                } @else {
                                    "upload"
                                }
                            }
                            td { (version.file.as_deref().unwrap_or("—")) }
                        }
                    }
                }
            }
        }
    };
    layout(visitor, "Templates", content)
}
