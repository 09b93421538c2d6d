// Swagger UI (5.x, which reads OpenAPI 3.1) over /openapi.json.
"use strict";
(async () => {
  const root = document.getElementById("swagger-ui");
  const spec = await (await fetch(root.dataset.specUrl)).json();
  window.ui = SwaggerUIBundle({
    spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
