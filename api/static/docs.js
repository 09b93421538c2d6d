// Swagger UI over /openapi.json. A Swagger UI older than 5 refuses `openapi: 3.1.x`,
// so the page relabels its own copy of the document (data-relabel); the served one stays 3.1.
"use strict";
(async () => {
  const root = document.getElementById("swagger-ui");
  const spec = await (await fetch(root.dataset.specUrl)).json();
  if (root.dataset.relabel) spec.openapi = root.dataset.relabel;
  window.ui = SwaggerUIBundle({
    spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
