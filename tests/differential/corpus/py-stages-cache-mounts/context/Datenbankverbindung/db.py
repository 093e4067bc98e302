DSN = 'sqlite://'
