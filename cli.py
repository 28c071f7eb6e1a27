from diffclf.cli import main

main()
