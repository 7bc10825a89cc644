//! The web console's assets, embedded in the binary: `console/dist/` is built from the console's
//! TypeScript sources (`npm run build` in `console/`) and committed, so building a gateway needs
//! no Node. The core serves them (`CoreConfig::console`) without touching a file; `scripts/test`
//! checks that the committed files are what the sources build to (`npm run check`).

use diminuendo_core::http::{Asset, Assets};

/// The console's asset table: the page at `/`, its script, style sheet and icon under `/assets/`.
pub fn assets() -> Assets {
    Assets::new(vec![
        Asset::new(
            "/",
            "text/html; charset=utf-8",
            include_bytes!("../../../console/dist/index.html"),
        ),
        Asset::new(
            "/assets/app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../../console/dist/app.js"),
        ),
        Asset::new(
            "/assets/app.css",
            "text/css; charset=utf-8",
            include_bytes!("../../../console/dist/app.css"),
        ),
        Asset::new(
            "/assets/favicon.svg",
            "image/svg+xml",
            include_bytes!("../../../console/dist/favicon.svg"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use diminuendo_core::http::Asset;

    #[test]
    fn every_embedded_asset_is_served_and_the_page_loads_only_them() {
        let assets = super::assets();
        assert_eq!(assets.iter().count(), 4);
        for asset in assets.iter() {
            let status = assets.respond(asset.path(), None).map(|r| r.status());
            assert_eq!(status, Some(200), "{}", asset.path());
        }
        let page = include_str!("../../../console/dist/index.html");
        // Every asset the page names is embedded; it has no inline script or style, which the
        // Content-Security-Policy would block.
        for path in assets.iter().map(Asset::path).filter(|path| *path != "/") {
            assert!(
                page.contains(&format!("\"{path}\"")),
                "the page does not load {path}"
            );
        }
        assert_eq!(page.matches("<script").count(), 1, "one script, the bundle");
        assert!(page.contains("<script src=\"/assets/app.js\""));
        assert!(!page.contains("<style") && !page.contains(" style="));
    }
}
