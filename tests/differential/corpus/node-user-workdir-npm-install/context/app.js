console.log("customer list app");
