const fs = require("fs");
fs.mkdirSync("dist", {recursive: true});
fs.writeFileSync("dist/app.js", "console.log(42)\n");
