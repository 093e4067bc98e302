module github.com/example/chat_app

go 1.19
