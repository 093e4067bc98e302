console.log("ascii", process.env.APP_VERSION);
