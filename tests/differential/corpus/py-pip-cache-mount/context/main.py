print('hackathon')
