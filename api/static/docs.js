// Swagger UI (5.x, which reads OpenAPI 3.1) over /openapi.json.
"use strict";
(async () => {
  const root = document.getElementById("swagger-ui");
  const spec = await (await fetch(root.dataset.specUrl)).json();
  window.ui = SwaggerUIBundle({
    spec,
    dom_id: "#swagger-ui",
    validatorUrl: null, // no badge from validator.swagger.io: the page loads only from here
    deepLinking: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
