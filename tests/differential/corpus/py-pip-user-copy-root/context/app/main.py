print('sentiment')
