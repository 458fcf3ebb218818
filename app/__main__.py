from app import ShapeQCApp

if __name__ == "__main__":
    ShapeQCApp().run()
