const ms = require("ms");
console.log("up for", ms(60000));
