"""Product.audience_group (who a product is for, normalised: ml.audience), MANGO products and stylist outfits."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0002_ui'),
    ]

    operations = [
        migrations.AddField(
            model_name='product',
            name='audience_group',
            field=models.CharField(choices=[('women', 'women'), ('men', 'men'), ('kids', 'kids'), ('baby', 'baby'), ('unisex', 'unisex')], db_index=True, default='unisex', max_length=8),
        ),
        migrations.AlterField(
            model_name='outfit',
            name='source',
            field=models.CharField(choices=[('basket', 'Co-purchase basket'), ('stylist', 'Composed by a stylist'), ('curated', 'Curated by a merchandiser')], default='curated', max_length=16),
        ),
        migrations.AlterField(
            model_name='product',
            name='source',
            field=models.CharField(choices=[('hm', 'H&M sample'), ('mango', 'MANGO sample'), ('upload', 'Merchandiser upload')], default='upload', max_length=16),
        ),
    ]
