from diffclf.main import main

main()
