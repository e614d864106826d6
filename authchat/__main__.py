from authchat.cli import main

main()
