console.log('cars');
